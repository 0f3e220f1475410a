"""CLIP's frozen text tower and PixelCLIP's learnable class prompts (docs/METHOD.md §3).

The text tower is open_clip's, used through the modules of a loaded model (no vendored copy).
Because it is causal, the output pooled at the end-of-text token never depends on the positions
after it, so every sequence is run at its real length instead of the 77-token context: the same
result up to floating-point rounding, several times cheaper.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .attention import multi_head_attention, residual_block, supports_block

logger = logging.getLogger(__name__)

__all__ = ["CLIPTextEncoder", "LearnablePrompts"]

# Pool types whose pooled position is a token of the text, so truncation after it is exact.
_SUPPORTED_POOL_TYPES = ("argmax", "eos")
# Candidate placeholder words for the learnable tokens, tried in order; the first one that is a
# single token and absent from the template is used (checked with the tokenizer, see
# _locate_placeholders). Two different words are needed to find the positions by difference.
_PLACEHOLDER_WORDS = ("X", "Z", "Q", "V", "K", "J", "*", "#", "@", "%", "&", "=")


class CLIPTextEncoder(nn.Module):
    """The frozen text tower of an open_clip CLIP model, run on token embeddings of any length.

    The modules are shared by reference with the CLIP model they come from (no copy), under
    open_clip's names, so the state-dict keys are ``token_embedding.weight``,
    ``positional_embedding``, ``transformer.resblocks.*``, ``ln_final.*`` and
    ``text_projection`` (``text_projection.weight``/``.bias`` if it is an ``nn.Linear``).
    Every parameter is frozen (``requires_grad=False``) and the tower always stays in eval mode;
    gradients still flow through it to the input embeddings, which is how prompts learn.

    Build it with :meth:`from_clip`.
    """

    def __init__(
        self,
        *,
        token_embedding: nn.Embedding,
        positional_embedding: nn.Parameter,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection: nn.Parameter | nn.Linear | None,
        attn_mask: Tensor,
        pool_type: str = "argmax",
        eos_id: int | None = None,
        tokenizer=None,
    ):
        """Args: the text modules of an open_clip model (see :meth:`from_clip`), its causal
        attention mask (context_length, context_length; float, -inf above the diagonal), its
        pool type ("argmax" or "eos"), the end-of-text id (for "eos") and its tokenizer (needed
        by :meth:`encode_text` only)."""
        super().__init__()
        if pool_type not in _SUPPORTED_POOL_TYPES:
            raise ValueError(
                f"unknown text pool type {pool_type!r}; choose from {_SUPPORTED_POOL_TYPES} "
                "(pooling must read a token of the text for the truncated computation)"
            )
        if pool_type == "eos" and eos_id is None:
            raise ValueError("text pool type 'eos' needs eos_id")
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        # Non-persistent, like open_clip's own buffer: it never reaches a checkpoint.
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.tokenizer = tokenizer
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_clip(cls, model: nn.Module, tokenizer) -> CLIPTextEncoder:
        """Take the text tower of an open_clip model by reference.

        Args:
            model: an ``open_clip.CLIP`` (text modules on the model itself) or a model with a
                ``text`` attribute holding an open_clip ``TextTransformer`` (``CustomTextCLIP``).
            tokenizer: the model's open_clip tokenizer (``open_clip.get_tokenizer(name)``).

        Raises:
            ValueError: if the tower is not causal, has a class token or pools in a way that
                truncation cannot reproduce.
        """
        tower = model.text if hasattr(model, "text") and not hasattr(model, "ln_final") else model
        attn_mask = getattr(tower, "attn_mask", None)
        if attn_mask is None:
            raise ValueError(
                f"{type(model).__name__}: text tower has no causal attention mask; the "
                "truncated computation needs a causal text transformer"
            )
        if getattr(tower, "cls_emb", None) is not None:
            raise ValueError(
                f"{type(model).__name__}: text towers with a class token are unsupported"
            )
        pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        eos_id = getattr(tower, "text_eos_id", None)
        if eos_id is None:
            eos_id = getattr(tower, "eos_id", None)
        return cls(
            token_embedding=tower.token_embedding,
            positional_embedding=tower.positional_embedding,
            transformer=tower.transformer,
            ln_final=tower.ln_final,
            text_projection=tower.text_projection,
            attn_mask=attn_mask,
            pool_type=pool_type,
            eos_id=eos_id,
            tokenizer=tokenizer,
        )

    def train(self, mode: bool = True) -> CLIPTextEncoder:
        # The tower is frozen: it stays in eval mode (no dropout) whatever the parent's mode.
        return super().train(False)

    @property
    def width(self) -> int:
        """Width W of the token embeddings."""
        return self.token_embedding.weight.shape[1]

    @property
    def out_dim(self) -> int:
        """Dimension D of the text embeddings (after the projection)."""
        if self.text_projection is None:
            return self.width
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection.out_features
        return self.text_projection.shape[1]

    @property
    def context_length(self) -> int:
        """Longest sequence the positional table covers (77 for CLIP)."""
        return self.positional_embedding.shape[0]

    def eot_indices(self, token_ids: Tensor) -> Tensor:
        """Position of the token the tower pools at.

        Args:
            token_ids: LongTensor (N, L) of tokenized texts.

        Returns:
            LongTensor (N,): the end-of-text position of each row.
        """
        if self.pool_type == "argmax":
            # OpenAI-style vocabularies give end-of-text the highest id (open_clip pools the same).
            return token_ids.argmax(dim=-1)
        return (token_ids == self.eos_id).int().argmax(dim=-1)

    def encode_embeddings(
        self, embeds: Tensor, eot_index: Tensor, shared_prefix: int = 0
    ) -> Tensor:
        """Run the tower on token-embedding sequences of length L <= context_length.

        Args:
            embeds: (N, L, W) float token embeddings (without positional embeddings).
            eot_index: LongTensor (N,), the position to pool at in each sequence (< L).
            shared_prefix: P, a promise by the caller that the first P positions of every
                sequence are identical and that every ``eot_index`` is >= P. The tower being
                causal, their hidden states are then the same in every sequence: they are
                computed once and the other positions attend to them as a cached prefix (see
                :meth:`_run_with_shared_prefix`). The same result up to float rounding.

        Returns:
            (N, D) text embeddings, not normalised. Differentiable w.r.t. ``embeds``.
        """
        if embeds.dim() != 3 or embeds.shape[-1] != self.width:
            raise ValueError(
                f"embeds must have shape (N, L, {self.width}), got {tuple(embeds.shape)}"
            )
        length = embeds.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"sequence length {length} exceeds context length {self.context_length}"
            )
        if eot_index.shape != embeds.shape[:1]:
            raise ValueError(
                f"eot_index must have shape ({embeds.shape[0]},), got {tuple(eot_index.shape)}"
            )
        cast_dtype = self.transformer.get_cast_dtype()
        x = embeds.to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = self.attn_mask[:length, :length]
        if not self._standard_blocks():
            x = self.transformer(x, attn_mask=mask)
        elif 0 < shared_prefix < length:
            x = self._run_with_shared_prefix(x, mask, shared_prefix)
            eot_index = eot_index - shared_prefix
        else:
            for block in self.transformer.resblocks:
                x = residual_block(block, x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def _standard_blocks(self) -> bool:
        """Whether the blocks are open_clip's batch-first self-attention blocks with a fused
        in-projection, which this class runs itself (:func:`.attention.residual_block`, and
        :meth:`_run_with_shared_prefix`); other towers run through their own ``forward``."""
        blocks = getattr(self.transformer, "resblocks", None)
        return (
            blocks is not None
            and getattr(self.transformer, "batch_first", True)
            and all(supports_block(b) for b in blocks)
        )

    def _run_with_shared_prefix(self, x: Tensor, mask: Tensor, prefix: int) -> Tensor:
        """The transformer on (N, L, W) inputs whose first ``prefix`` positions are the same in
        every row; returns the (N, L - prefix, W) outputs of the other positions.

        Each block runs as open_clip's ``ResidualAttentionBlock.forward`` does (pre-norm
        attention and MLP with layer scales), but the prefix is one sequence, and the suffix's
        queries attend to the prefix's keys/values (broadcast to the N rows) and to its own,
        under the rows ``prefix:`` of the causal mask. Autograd then never runs through the
        prefix (it does not depend on the learnable tokens), which removes its share of the
        backward too.
        """
        head, tail = x[:1, :prefix], x[:, prefix:]
        head_mask, tail_mask = mask[:prefix, :prefix], mask[prefix:, :]
        for block in self.transformer.resblocks:
            head_in = block.ln_1(head)
            tail_in = block.ln_1(tail)
            keys = torch.cat([head_in.expand(tail.shape[0], -1, -1), tail_in], dim=1)
            tail = tail + block.ls_1(multi_head_attention(block.attn, tail_in, keys, tail_mask))
            tail = tail + block.ls_2(block.mlp(block.ln_2(tail)))
            head = residual_block(block, head, attn_mask=head_mask)
        return tail

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Embed texts, each batch truncated to its longest real length.

        Texts are sorted by token length first so that a batch holds texts of similar length.

        Args:
            texts: N strings.
            batch_size: texts per forward pass (>= 1).

        Returns:
            (N, D) text embeddings in input order, not normalised, on the tower's device.
        """
        if self.tokenizer is None:
            raise ValueError("encode_text needs a tokenizer: build the encoder with from_clip")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.token_embedding.weight.device
        if len(texts) == 0:
            return torch.zeros(0, self.out_dim, device=device)
        ids = self.tokenizer(list(texts), context_length=self.context_length)
        eot = self.eot_indices(ids)
        order = torch.argsort(eot, stable=True)
        out = torch.empty(len(texts), self.out_dim, device=device)
        for start in range(0, len(texts), batch_size):
            sel = order[start : start + batch_size]
            length = int(eot[sel].max()) + 1
            batch_ids = ids[sel, :length].to(device)
            feats = self.encode_embeddings(self.token_embedding(batch_ids), eot[sel].to(device))
            out[sel.to(device)] = feats.to(out.dtype)
        return out


def _locate_placeholders(tokenizer, template: str, length: int, context_length: int):
    """Tokenize ``template`` with ``length`` placeholder words and find where they are.

    The positions are found by difference between two tokenizations that use different
    placeholder words, so no token id is hard-coded. A word is accepted only if each of its
    occurrences became exactly one token and that token occurs nowhere else in the template.

    Returns:
        (ids, positions): LongTensor (context_length,) of the template's token ids and
        LongTensor (length,) of the placeholder positions.
    """

    def tokenize(word: str) -> Tensor:
        return tokenizer([template.replace("{}", " ".join([word] * length))], context_length)[0]

    tokenized = [(w, tokenize(w)) for w in _PLACEHOLDER_WORDS]
    for i, (word, ids) in enumerate(tokenized):
        for _, other_ids in tokenized[:i] + tokenized[i + 1 :]:
            differ = (ids != other_ids).nonzero().flatten()
            if differ.numel() != length or (other_ids[differ] != other_ids[differ[0]]).any():
                continue
            placeholder_id = ids[differ[0]]
            if (ids[differ] == placeholder_id).all() and int(
                (ids == placeholder_id).sum()
            ) == length:
                logger.debug("prompt placeholder %r at positions %s", word, differ.tolist())
                return ids, differ
    raise ValueError(
        f"template {template!r}: found no placeholder word among {_PLACEHOLDER_WORDS} that is a "
        f"single token appearing only at the {length} placeholder positions (is the template "
        "longer than the context length?)"
    )


class LearnablePrompts(nn.Module):
    """k learnable classes, each l token embeddings inside a fixed template (METHOD §3).

    ``prompt_tokens`` (k, l, W) is the only parameter (and the only state-dict entry). The
    template's token ids, the placeholder positions and the end-of-text position are
    non-persistent buffers. The text encoder is not a submodule (its owner passes it to
    :meth:`forward`), so its weights are never duplicated in a checkpoint.
    """

    def __init__(
        self,
        *,
        text_encoder: CLIPTextEncoder,
        tokenizer,
        num_clusters: int = 64,
        length: int = 4,
        template: str = "A photo of a {} in the scene",
        seed: int = 0,
    ):
        """
        Args:
            text_encoder: the frozen tower whose token embeddings initialise the prompts.
            tokenizer: the tower's open_clip tokenizer.
            num_clusters: k, the number of learnable classes (>= 2).
            length: l, learnable token embeddings per class (>= 1).
            template: text with exactly one "{}", replaced by the l learnable tokens.
            seed: seed of a local generator drawing the initial vocabulary ids (the global RNG
                is not touched).
        """
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {num_clusters}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if template.count("{}") != 1:
            raise ValueError(f"template must contain exactly one '{{}}', got {template!r}")
        self.num_clusters = num_clusters
        self.length = length
        self.template = template

        ids, positions = _locate_placeholders(
            tokenizer, template, length, text_encoder.context_length
        )
        eot = int(text_encoder.eot_indices(ids[None])[0])
        if eot < int(positions.max()):
            raise ValueError(
                f"template {template!r} with {length} prompt tokens is truncated by the context "
                f"length {text_encoder.context_length}"
            )
        # Only the real length (through end-of-text) is kept: later positions never matter.
        self.register_buffer("template_ids", ids[: eot + 1].clone(), persistent=False)
        self.register_buffer("placeholder_positions", positions.clone(), persistent=False)
        self.register_buffer("eot_index", torch.tensor(eot), persistent=False)
        # The template tokens before the first learnable token are the same for all k classes.
        self.shared_prefix = int(positions.min())

        weight = text_encoder.token_embedding.weight
        generator = torch.Generator().manual_seed(seed)
        vocab_ids = torch.randint(
            0, weight.shape[0], (num_clusters * length,), generator=generator
        ).to(weight.device)
        init = weight.detach()[vocab_ids].float().reshape(num_clusters, length, -1)
        self.prompt_tokens = nn.Parameter(init.clone())

    @property
    def real_length(self) -> int:
        """Tokens the tower runs on: the template through its end-of-text token."""
        return self.template_ids.shape[0]

    def embedding_sequences(self, text_encoder: CLIPTextEncoder) -> Tensor:
        """The (k, L_real, W) token-embedding sequences: template embeddings with the learnable
        tokens at the placeholder positions."""
        base = text_encoder.token_embedding(self.template_ids.to(self.prompt_tokens.device))
        seq = base.to(self.prompt_tokens.dtype).expand(self.num_clusters, -1, -1).clone()
        seq[:, self.placeholder_positions] = self.prompt_tokens
        return seq

    def forward(self, text_encoder: CLIPTextEncoder) -> Tensor:
        """Text embeddings f_C of the k learnable classes.

        Args:
            text_encoder: the frozen text tower (the same one used at construction).

        Returns:
            (k, D) float tensor, not normalised; differentiable w.r.t. ``prompt_tokens``.
        """
        seq = self.embedding_sequences(text_encoder)
        eot = self.eot_index.to(seq.device).expand(self.num_clusters)
        # The template tokens before the first learnable token are the same for all k classes.
        return text_encoder.encode_embeddings(seq, eot, shared_prefix=self.shared_prefix)

    def extra_repr(self) -> str:
        return (
            f"num_clusters={self.num_clusters}, length={self.length}, "
            f"template={self.template!r}, real_length={self.real_length}"
        )
