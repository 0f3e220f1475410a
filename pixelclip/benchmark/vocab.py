"""The cost of a new vocabulary (``vocab:vit:{ours,plain}``): the 150 ADE20K classes x the 8
templates of ``imagenet_select`` through the random-weight ViT-B/16 text tower, every run a
vocabulary the embedder has not seen (no cache). "ours" is
:func:`~pixelclip.modeling.vocabulary.encode_vocabulary` (each template's leading tokens run
once, the rest of all texts batched by length, the last block at end-of-text only); "plain"
encodes the same distinct texts with one
:meth:`~pixelclip.modeling.text.CLIPTextEncoder.encode_text` call (sorted by length, each batch
truncated to its longest text; what ``encode_vocabulary`` did before)."""

from __future__ import annotations

from .common import REPO, count_flops, summary, timed_runs


def text_tower(s: dict, quick: bool):
    """The CLIP text tower of the vit model of the settings, random weights (no download)."""
    import open_clip
    import torch

    from ..modeling.text import CLIPTextEncoder

    name = s["models"]["vit"]["name"]
    torch.manual_seed(0)
    if quick:
        config = REPO / "configs" / "clip_models" / f"{name}.json"
        open_clip.add_model_config(str(config))
        model = open_clip.create_model(name, pretrained=None)
    else:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
    return CLIPTextEncoder.from_clip(model.eval(), open_clip.get_tokenizer(name))


def bench_vocab(spec: str, s: dict, args) -> dict:
    import torch.nn.functional as F

    from ..modeling.vocabulary import (
        encode_vocabulary,
        load_vocabulary,
        prompt_templates,
        split_synonyms,
    )

    variant = spec.split(":")[2]
    encoder = text_tower(s, args.quick).to(args.device)
    names = load_vocabulary(str(REPO / "pixelclip/data/class_names/ade20k_150.json"))
    names = names[: s["num_classes"]]
    templates = prompt_templates(s["ensemble"])
    texts = list(dict.fromkeys(t.replace("{}", n) for c in names for n in split_synonyms(c)
                               for t in templates))  # fmt: skip

    def ours():
        return encode_vocabulary(encoder, names, templates)

    def plain():
        return F.normalize(encoder.encode_text(texts), dim=-1)

    fn = ours if variant == "ours" else plain
    out = summary(timed_runs(fn, args.warmup, args.repeats))
    flops = count_flops(fn)
    ids = encoder.tokenizer(texts)
    out.update(
        gflop=flops / 1e9,
        gflops_achieved=flops / 1e9 / out["median_s"],
        settings={"model": s["models"]["vit"]["name"], "classes": len(names),
                  "templates": len(templates), "distinct_texts": len(texts),
                  "text_tokens": int((encoder.eot_indices(ids) + 1).sum()),
                  "variant": variant, "precision": "fp32"},
    )  # fmt: skip
    return out
