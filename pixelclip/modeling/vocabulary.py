"""Class names to CLIP text embeddings with prompt ensembles, cached (docs/METHOD.md §9).

The prompt-ensembling recipe (encode each class in many templates, average the normalised
embeddings) is the one of Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021 (https://github.com/openai/CLIP, notebook
"Prompt_Engineering_for_ImageNet").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint.safe_io import read_tensor_file, write_atomically
from .attention import residual_block, supports_block
from .text import CLIPTextEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "PROMPT_ENSEMBLES",
    "VocabularyEmbedder",
    "common_prefix_length",
    "encode_prompt_texts",
    "encode_vocabulary",
    "load_vocabulary",
    "prompt_templates",
    "split_synonyms",
]

# The 80 ImageNet prompt templates of the CLIP paper, in its order.
_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)  # fmt: skip

PROMPT_ENSEMBLES: dict[str, tuple[str, ...]] = {
    "single": ("A photo of a {} in the scene",),
    "imagenet_select": (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
        "A photo of a {} in the scene",
    ),
    "imagenet": _IMAGENET_TEMPLATES,
}


def prompt_templates(ensemble: str) -> tuple[str, ...]:
    """The templates of a named prompt ensemble (a key of :data:`PROMPT_ENSEMBLES`), or a
    single literal template holding exactly one "{}" (e.g. "a photo of a {}.")."""
    if ensemble in PROMPT_ENSEMBLES:
        return PROMPT_ENSEMBLES[ensemble]
    if ensemble.count("{}") == 1:
        return (ensemble,)
    raise ValueError(
        f"unknown prompt ensemble {ensemble!r}; choose from {list(PROMPT_ENSEMBLES)} or give one "
        'template with a single "{}"'
    )


def _validate_names(names, source: str) -> list[str]:
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{source}: expected a list of class names, got {type(names).__name__}")
    if len(names) == 0:
        raise ValueError(f"{source}: the vocabulary is empty; expected at least one class name")
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: class {i} is {name!r}; expected a non-empty string")
        out.append(name.strip())
    return out


def load_vocabulary(spec: Sequence[str] | str | os.PathLike) -> list[str]:
    """Resolve a vocabulary specification to a list of class names.

    Args:
        spec: a list/tuple of class names; or a path to a JSON file holding a list of names or
            a dict with key "stuff_classes"; or the name of a registered detectron2 dataset
            (its ``MetadataCatalog`` entry's ``stuff_classes``). A name "a, b" stands for one
            class with synonyms a and b.

    Returns:
        The class names, stripped.

    Raises:
        FileNotFoundError: a path-like spec (ending in .json or containing a path separator)
            that does not exist.
        ValueError: empty vocabulary, non-string entries, malformed JSON, unknown dataset or
            dataset without stuff_classes.
    """
    if isinstance(spec, (list, tuple)):
        return _validate_names(spec, "vocabulary")
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(
            f"vocabulary: expected a list of names, a JSON path or a dataset name, got "
            f"{type(spec).__name__}"
        )
    path = Path(spec)
    text = os.fspath(spec)
    if path.is_file():
        return _load_json_vocabulary(path)
    if isinstance(spec, os.PathLike) or text.endswith(".json") or os.sep in text:
        raise FileNotFoundError(f"vocabulary file {text!r} does not exist")
    return _dataset_vocabulary(text)


def _load_json_vocabulary(path: Path) -> list[str]:
    source = f"vocabulary file {str(path)!r}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: malformed JSON ({e}); expected a list of class names") from e
    if isinstance(data, dict):
        if "stuff_classes" not in data:
            raise ValueError(f"{source}: a JSON object needs the key 'stuff_classes'")
        data = data["stuff_classes"]
    return _validate_names(data, source)


def _dataset_vocabulary(name: str) -> list[str]:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list() and name not in MetadataCatalog.list():
        raise ValueError(
            f"vocabulary {name!r} is neither an existing file nor a registered detectron2 dataset"
        )
    classes = MetadataCatalog.get(name).get("stuff_classes", None)
    if classes is None:
        raise ValueError(f"dataset {name!r}: its metadata has no 'stuff_classes'")
    return _validate_names(list(classes), f"dataset {name!r}")


def split_synonyms(class_name: str) -> list[str]:
    """Synonyms of one class: "a, b" -> ["a", "b"] (empty parts dropped)."""
    synonyms = [s.strip() for s in class_name.split(",") if s.strip()]
    if not synonyms:
        raise ValueError(f"class name {class_name!r} holds no synonym")
    return synonyms


def _validate_templates(templates: Sequence[str]) -> list[str]:
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(f"templates: expected a non-empty sequence of strings, got {templates!r}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"template {t!r}: expected a string with exactly one '{{}}'")
    return list(templates)


def encode_vocabulary(
    text_encoder: CLIPTextEncoder,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> Tensor:
    """Prompt-ensembled, L2-normalised text embeddings of class names (METHOD §9).

    Per class and template each synonym's text is encoded and L2-normalised; the synonyms are
    averaged per template and re-normalised; the templates are then averaged and the result
    L2-normalised. Autocast is disabled so the result does not depend on the caller's precision
    context.

    The distinct texts are encoded by :func:`encode_prompt_texts`: grouped by template, each
    group's common leading tokens (start-of-text and the template's words before the class
    name) are run once instead of once per class, and every batch stops at its longest text.

    Args:
        text_encoder: the frozen CLIP text tower.
        class_names: C names; "a, b" is one class with synonyms a and b.
        templates: T strings with one "{}" each.
        batch_size: texts per forward pass.

    Returns:
        (C, D) float32 tensor of unit rows, on the text encoder's device.
    """
    names = _validate_names(list(class_names), "class_names")
    templates = _validate_templates(templates)
    num_t = len(templates)
    texts: dict[str, int] = {}  # distinct text -> row of the encoded batch
    text_group: list[int] = []  # per distinct text: the template it was first made with
    text_rows, groups = [], []  # per (class, template, synonym): its text row and (c, t) group
    for c, name in enumerate(names):
        for synonym in split_synonyms(name):
            for t, template in enumerate(templates):
                text = template.replace("{}", synonym)
                if text not in texts:
                    texts[text] = len(texts)
                    text_group.append(t)
                text_rows.append(texts[text])
                groups.append(c * num_t + t)
    device = text_encoder.token_embedding.weight.device
    with torch.autocast(device_type=device.type, enabled=False):
        emb = encode_prompt_texts(text_encoder, list(texts), text_group, batch_size=batch_size)
    emb = F.normalize(emb.float(), dim=-1)
    rows = torch.tensor(text_rows, device=device)
    group_index = torch.tensor(groups, device=device)
    # Sum of unit vectors then normalisation = mean then normalisation.
    per_template = torch.zeros(len(names) * num_t, emb.shape[1], device=device)
    per_template.index_add_(0, group_index, emb[rows])
    per_template = F.normalize(per_template, dim=-1).view(len(names), num_t, -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def common_prefix_length(ids: Tensor, eot: Tensor) -> int:
    """Leading positions where every row of ``ids`` (N, L) holds the same token, at most
    ``min(eot)`` (the pooled end-of-text position must stay outside the shared part)."""
    same = (ids == ids[:1]).all(dim=0).long()
    run = int(same.cumprod(dim=0).sum())  # length of the leading run of equal columns
    return min(run, int(eot.min()))


@torch.no_grad()
def encode_prompt_texts(
    text_encoder: CLIPTextEncoder,
    texts: Sequence[str],
    group_of: Sequence[int],
    batch_size: int = 256,
) -> Tensor:
    """:meth:`CLIPTextEncoder.encode_text` of ``texts``, sharing the work of common prefixes.

    The texts are tokenized once and split into the groups ``group_of`` names (e.g. one group
    per template). The tower being causal, the positions every text of a group has in common
    from the start (its "head": start-of-text and the template's words before the class) have
    the same hidden states in all of them: each head runs once, and the rest of every text (its
    "tail") attends to its head's cached keys and values. With open_clip's standard blocks
    (:func:`~.attention.supports_block`) the tails of all groups are batched together, sorted
    by tail length so that a batch has little padding (:func:`_encode_tails`), and the last
    block runs its queries, output projection and MLP at the end-of-text positions only (the
    one it pools); other towers run group by group through
    :meth:`CLIPTextEncoder.encode_embeddings` with ``shared_prefix``. The same result as one
    ``encode_text`` call up to float rounding.

    Args:
        texts: N strings.
        group_of: N group labels (any hashable values).
        batch_size: texts per forward pass (>= 1).

    Returns:
        (N, D) text embeddings in input order, not normalised, on the tower's device.
    """
    if text_encoder.tokenizer is None:
        raise ValueError("encode_prompt_texts needs a tokenizer: build the encoder with from_clip")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(group_of) != len(texts):
        raise ValueError(f"group_of has {len(group_of)} labels for {len(texts)} texts")
    device = text_encoder.token_embedding.weight.device
    out = torch.empty(len(texts), text_encoder.out_dim, device=device)
    if len(texts) == 0:
        return out
    ids = text_encoder.tokenizer(list(texts), context_length=text_encoder.context_length)
    eot = text_encoder.eot_indices(ids)
    members: dict = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    groups = [torch.tensor(rows) for rows in members.values()]
    heads = [common_prefix_length(ids[rows], eot[rows]) if len(rows) > 1 else 0 for rows in groups]
    if _packable(text_encoder):
        return _encode_tails(text_encoder, ids, eot, groups, heads, batch_size, out)
    for rows, head in zip(groups, heads):
        rows = rows[torch.argsort(eot[rows], stable=True)]
        for start in range(0, len(rows), batch_size):
            sel = rows[start : start + batch_size]
            length = int(eot[sel].max()) + 1
            feats = text_encoder.encode_embeddings(
                text_encoder.token_embedding(ids[sel, :length].to(device)),
                eot[sel].to(device),
                shared_prefix=head if len(sel) > 1 else 0,
            )
            out[sel.to(device)] = feats.to(out.dtype)
    return out


def _packable(text_encoder: CLIPTextEncoder) -> bool:
    """Whether :func:`_encode_tails` can run the tower: batch-first open_clip blocks that
    :func:`~.attention.residual_block` supports."""
    blocks = getattr(text_encoder.transformer, "resblocks", None)
    return (
        blocks is not None
        and len(blocks) > 0
        and getattr(text_encoder.transformer, "batch_first", True)
        and all(supports_block(b) for b in blocks)
    )


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(N, L, W) -> (N, heads, L, W / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _encode_tails(text_encoder, ids, eot, groups, heads, batch_size, out) -> Tensor:
    """The packed computation of :func:`encode_prompt_texts` (standard blocks only).

    Each group's head (P_g positions) runs once through the blocks, keeping every block's keys
    and values, padded to the longest head. A batch of tails (rows of several groups, tail
    lengths S) then runs each block as open_clip's pre-norm residual block does, its queries
    attending to [own head's keys (padding masked out), own tail's keys (causal)], with the
    positional embeddings of their real positions. In the last block only the end-of-text
    query of each row is computed.
    """
    device = out.device
    blocks = list(text_encoder.transformer.resblocks)
    cast = text_encoder.transformer.get_cast_dtype()
    pos = text_encoder.positional_embedding.to(cast)
    width = text_encoder.width
    num_heads = blocks[0].attn.num_heads
    longest = max(max(heads), 1)
    # Per group and block: the head's keys and values, (G, P_max, W) each, zero-padded.
    head_k = torch.zeros(len(blocks), len(groups), longest, width, device=device, dtype=cast)
    head_v = torch.zeros_like(head_k)
    for g, (rows, p) in enumerate(zip(groups, heads)):
        if p == 0:
            continue
        x = text_encoder.token_embedding(ids[rows[0], :p].to(device)).to(cast)[None] + pos[:p]
        causal = text_encoder.attn_mask[:p, :p].to(device)
        for b, block in enumerate(blocks):
            kv = F.linear(block.ln_1(x), block.attn.in_proj_weight[width:],
                          None if block.attn.in_proj_bias is None
                          else block.attn.in_proj_bias[width:])  # fmt: skip
            head_k[b, g, :p], head_v[b, g, :p] = kv[0].chunk(2, dim=-1)
            x = residual_block(block, x, attn_mask=causal)
    group_index = torch.empty(len(ids), dtype=torch.long)
    head_len = torch.empty(len(ids), dtype=torch.long)
    for g, (rows, p) in enumerate(zip(groups, heads)):
        group_index[rows], head_len[rows] = g, p
    rows_all = torch.cat(groups)
    tail_len = eot[rows_all] + 1 - head_len[rows_all]
    rows_all = rows_all[torch.argsort(tail_len, stable=True)]
    for start in range(0, len(rows_all), batch_size):
        sel = rows_all[start : start + batch_size]
        s = int((eot[sel] + 1 - head_len[sel]).max())
        offsets = head_len[sel, None] + torch.arange(s)  # (N, S) real positions of the tail
        offsets = offsets.clamp(max=ids.shape[1] - 1)
        tail_ids = ids[sel[:, None], offsets].to(device)
        x = text_encoder.token_embedding(tail_ids).to(cast) + pos[offsets.to(device)]
        g_sel = group_index[sel].to(device)
        # Additive mask over [head (P_max), tail (S)] keys: a head slot counts if it is real,
        # a tail key if it is not after the query (causal).
        key_pos = torch.arange(longest, device=device)
        head_ok = key_pos[None, :] < head_len[sel].to(device)[:, None]  # (N, P_max)
        tail_ok = torch.ones(s, s, dtype=torch.bool, device=device).tril()
        allowed = torch.cat([head_ok[:, None, :].expand(-1, s, -1),
                             tail_ok[None].expand(len(sel), -1, -1)], dim=-1)  # fmt: skip
        mask = torch.zeros(allowed.shape, dtype=cast, device=device)
        mask.masked_fill_(~allowed, float("-inf"))
        eot_tail = (eot[sel] - head_len[sel]).to(device)
        for b, block in enumerate(blocks):
            last = b == len(blocks) - 1
            attn = block.attn
            h = block.ln_1(x)
            weight, bias = attn.in_proj_weight, attn.in_proj_bias
            k, v = F.linear(h, weight[width:], None if bias is None else bias[width:]).chunk(2, -1)
            if last:  # only the pooled position matters from here on
                x = x[torch.arange(len(sel), device=device), eot_tail][:, None]
                h = h[torch.arange(len(sel), device=device), eot_tail][:, None]
                rows_mask = mask[torch.arange(len(sel), device=device), eot_tail][:, None]
            else:
                rows_mask = mask
            q = F.linear(h, weight[:width], None if bias is None else bias[:width])
            keys = torch.cat([head_k[b, g_sel], k], dim=1)
            values = torch.cat([head_v[b, g_sel], v], dim=1)
            y = F.scaled_dot_product_attention(
                _split_heads(q, num_heads),
                _split_heads(keys, num_heads),
                _split_heads(values, num_heads),
                attn_mask=rows_mask[:, None],
            )
            y = F.linear(y.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)
            x = x + block.ls_1(y)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = text_encoder.ln_final(x[:, 0])
        proj = text_encoder.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        out[sel.to(device)] = x.to(out.dtype)
    return out


def _tensor_bytes(t: Tensor):
    return t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()


class VocabularyEmbedder:
    """Computes :func:`encode_vocabulary` once per (text-tower weights, vocabulary, templates).

    Results are kept in memory (least recently used first out) and, with ``cache_dir``, on disk
    as ``<key>.pt`` files written atomically (temporary file + rename) and read with
    ``torch.load(weights_only=True)``. A corrupt or mismatching cache file is ignored with a
    warning and rewritten. The key is a SHA-256 over a fingerprint of the tower's weights (all
    of its state-dict tensors, re-hashed only when a tensor is modified or moved), the class
    names and the templates.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_memory_entries: int = 16):
        """
        Args:
            cache_dir: folder of the disk cache (created on first write); None or "" = memory only.
            max_memory_entries: vocabularies kept in memory (>= 1).
        """
        if max_memory_entries < 1:
            raise ValueError(f"max_memory_entries must be >= 1, got {max_memory_entries}")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_memory_entries = max_memory_entries
        self._memory: OrderedDict[str, Tensor] = OrderedDict()
        self._fingerprint_stamp: tuple | None = None
        self._fingerprint: str | None = None

    def weights_fingerprint(self, text_encoder: CLIPTextEncoder) -> str:
        """SHA-256 hex digest of the tower's state-dict tensors (names, dtypes, shapes, bytes)."""
        state = text_encoder.state_dict(keep_vars=True)
        # In-place updates bump a tensor's version counter and moves change its storage, so an
        # unchanged stamp means unchanged weights and hashing (~0.3 s for ViT-B/16) is skipped.
        stamp = tuple(
            (k, v.data_ptr(), v._version, v.dtype, tuple(v.shape), str(v.device))
            for k, v in state.items()
        )
        if stamp != self._fingerprint_stamp:
            h = hashlib.sha256()
            for k, v in state.items():
                h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
                h.update(_tensor_bytes(v))
            self._fingerprint_stamp, self._fingerprint = stamp, h.hexdigest()
        return self._fingerprint

    def cache_key(
        self, text_encoder: CLIPTextEncoder, class_names: Sequence[str], templates: Sequence[str]
    ) -> str:
        """Hex key of (weights fingerprint, tokenizer type, class names, templates)."""
        payload = {
            "weights": self.weights_fingerprint(text_encoder),
            "tokenizer": type(text_encoder.tokenizer).__name__,
            "class_names": list(class_names),
            "templates": list(templates),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def __call__(
        self, text_encoder: CLIPTextEncoder, class_names: Sequence[str], templates: Sequence[str]
    ) -> Tensor:
        """Class embeddings, from the cache when possible.

        Returns:
            (C, D) float32 unit rows on the text encoder's device (a fresh copy).
        """
        names = _validate_names(list(class_names), "class_names")
        templates = _validate_templates(templates)
        device = text_encoder.token_embedding.weight.device
        key = self.cache_key(text_encoder, names, templates)
        emb = self._memory.get(key)
        if emb is None:
            emb = self._load(key, names, templates)
        if emb is None:
            logger.info("encoding %d classes x %d templates", len(names), len(templates))
            emb = encode_vocabulary(text_encoder, names, templates).cpu()
            self._save(key, emb, names, templates)
        self._memory[key] = emb
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_memory_entries:
            self._memory.popitem(last=False)
        return emb.to(device, copy=True)

    def clear(self) -> None:
        """Forget the in-memory entries (disk files stay)."""
        self._memory.clear()

    def _path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.pt" if self.cache_dir is not None else None

    def _load(self, key: str, names: list[str], templates: list[str]) -> Tensor | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = read_tensor_file(path, what="text-embedding cache")
            emb = data["embeddings"]
            ok = (
                data.get("key") == key
                and data.get("class_names") == names
                and data.get("templates") == templates
                and isinstance(emb, Tensor)
                and emb.dim() == 2
                and emb.shape[0] == len(names)
            )
        except Exception as e:  # any unreadable file is recomputed, never fatal
            logger.warning("ignoring unreadable text-embedding cache %s (%s); rewriting", path, e)
            return None
        if not ok:
            logger.warning("ignoring mismatching text-embedding cache %s; rewriting", path)
            return None
        logger.info("loaded text embeddings from %s", path)
        return emb.float()

    def _save(self, key: str, emb: Tensor, names: list[str], templates: list[str]) -> None:
        path = self._path(key)
        if path is None:
            return
        payload = {"key": key, "class_names": names, "templates": templates, "embeddings": emb}
        try:  # atomic: readers see the old file or the complete new one
            write_atomically(path, lambda f: torch.save(payload, f))
        except OSError as e:  # a read-only cache must not stop inference
            logger.warning("could not write text-embedding cache %s (%s)", path, e)
