"""Pretrain the small ToyWorld CLIP contrastively on (image, caption) pairs of the train split.

The model is a standard open_clip ``CLIP`` built from an open_clip model config (default
``configs/clip_models/toy-clip.json``) with open_clip's standard tokenizer, so PixelCLIP uses it
through exactly the same adapters, tokenizer and prompt code as the real backbones.

Training: the CLIP objective (Radford et al. 2021, arXiv 2103.00020): symmetric cross-entropy
over the in-batch cosine-similarity matrix times a learnable logit scale (initialised to
log(1/0.07), clamped at log(100)); AdamW (betas 0.9/0.98, eps 1e-6, no weight decay on gains,
biases, embeddings and the logit scale); linear warm-up then cosine decay; random horizontal flips
(captions carry no location words, so a flip keeps every caption true). Fixed seed, fixed step
count: the same command gives the same weights on the same machine.

After training the weights are rounded to the storage precision (fp16 by default, to keep the
file small), loaded back, and evaluated on the dev split:

* image -> caption retrieval among all dev captions (top-1 exact, and top-1 naming the same class
  set, since captions of different images may list the same classes);
* image-level zero-shot: is the best-scoring class prompt present in the image;
* dense zero-shot segmentation with the value-path readout of docs/METHOD.md §2
  (``pixelclip.modeling.clip.build_dense_encoder``): features bilinearly upsampled to the label
  size, cosine with the class-prompt embeddings, argmax; mIoU over all / stuff / thing classes,
  beside two chance levels (uniform random label; random label among the classes present).

Outputs in ``--output``: ``<model>.safetensors`` (state dict) and ``<model>.log.json`` (settings,
loss curve, dev metrics, timings, SHA-256 of the weights).

Example:
  tools/pretrain_toy_clip.py --output output/toy_clip   # the world goes to output/toy_clip/world
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from ..cli_help import HelpFormatter
from ..modeling.clip import create_clip
from ..modeling.dense import build_dense_encoder
from .world import TOYWORLD_CLASSES, TOYWORLD_STUFF, write_toyworld

REPO = Path(__file__).resolve().parents[2]
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def load_split(root: Path, split: str, labels: bool = False):
    """Images (N, S, S, 3) uint8 tensor, captions (list[str]) and optionally labels (N, S, S)."""
    captions_path = root / split / "captions.json"
    if not captions_path.is_file():
        raise FileNotFoundError(f"{captions_path} not found: write the world first")
    captions = json.loads(captions_path.read_text(encoding="utf-8"))
    stems = sorted(captions)
    img_dir = root / split / ("images" if split != "train" else "")

    def read(path: Path, flags: int) -> np.ndarray:
        array = cv2.imread(str(path), flags)
        if array is None:
            raise FileNotFoundError(f"cannot read image {path}")
        return array

    images = np.stack([read(img_dir / f"{s}.png", cv2.IMREAD_COLOR)[..., ::-1] for s in stems])
    out = [torch.from_numpy(images), [captions[s] for s in stems]]
    if labels:
        lab = [read(root / split / "labels" / f"{s}.png", cv2.IMREAD_UNCHANGED) for s in stems]
        out.append(torch.from_numpy(np.stack(lab)))
    return out


def to_clip_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, size, size), CLIP-normalised."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


def contrastive_loss(model, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; images (B, 3, S, S) float, tokens (B, L) long."""
    fi = F.normalize(model.encode_image(images), dim=-1)
    ft = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * fi @ ft.t()
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on gains, biases, embeddings and the logit scale."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for name, p in model.named_parameters():
        if p.ndim < 2 or id(p) in embeddings or "logit_scale" in name or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def pretrain(
    model, images, tokens, *, steps, batch_size, lr, weight_decay, warmup, seed, log_every=1
):
    """Train ``model`` in place; returns the per-step log (list of dicts)."""
    size = model.visual.image_size[0]
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(seed)
    order, cursor, log = torch.randperm(len(images), generator=gen), 0, []
    model.train()
    start, cpu_start = time.time(), time.process_time()
    for step in tqdm(range(steps), desc="pretrain toy CLIP", file=sys.stdout):
        if cursor + batch_size > len(order):  # new epoch (drop the incomplete last batch)
            order, cursor = torch.randperm(len(images), generator=gen), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        x = to_clip_input(images[idx], size)
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        warm = (step + 1) / max(1, warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * min(warm, cosine)
        loss = contrastive_loss(model, x, tokens[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            log.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "lr": opt.param_groups[0]["lr"],
                    "logit_scale": round(model.logit_scale.exp().item(), 3),
                    "seconds": round(time.time() - start, 1),
                    # CPU time of this process (all threads): comparable across machine loads.
                    "cpu_seconds": round(time.process_time() - cpu_start, 1),
                }
            )
    return log


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch: int = 256) -> torch.Tensor:
    out = [model.encode_text(tokenizer(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    size = model.visual.image_size[0]
    out = [
        model.encode_image(to_clip_input(images[i : i + batch], size))
        for i in range(0, len(images), batch)
    ]
    return F.normalize(torch.cat(out), dim=-1)


def class_prompts(template: str) -> list[str]:
    return [template.format(name) for name in TOYWORLD_CLASSES]


def present_classes(labels: torch.Tensor, min_pixels: int = 1) -> torch.Tensor:
    """(N, C) bool: class c covers at least ``min_pixels`` pixels of image n."""
    c = len(TOYWORLD_CLASSES)
    flat = labels.reshape(len(labels), -1).long()
    counts = torch.zeros(len(labels), c + 1, dtype=torch.long)
    counts.scatter_add_(1, flat.clamp(max=c), torch.ones_like(flat))
    return counts[:, :c] >= min_pixels


@torch.no_grad()
def evaluate_global(model, tokenizer, images, captions, labels, template: str) -> dict:
    """Caption retrieval and image-level zero-shot checks on a labelled split."""
    model.eval()
    fi = encode_images(model, images)
    sim = fi @ encode_texts(model, tokenizer, captions).t()
    best = sim.argmax(1)
    names = set(TOYWORLD_CLASSES)
    class_set = [frozenset(re.findall(r"[a-z]+", c)) & names for c in captions]
    top_cls = (fi @ encode_texts(model, tokenizer, class_prompts(template)).t()).argmax(1)
    present = present_classes(labels)
    return {
        "retrieval_top1": (best == torch.arange(len(best))).float().mean().item(),
        "retrieval_top1_same_classes": float(
            np.mean([class_set[int(b)] == class_set[i] for i, b in enumerate(best)])
        ),
        "top_class_present": present[torch.arange(len(top_cls)), top_cls].float().mean().item(),
    }


def miou(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> dict:
    """Per-class IoU (%) over classes with ground truth, as detectron2's SemSegEvaluator."""
    valid = gt != 255
    conf = (
        torch.bincount(
            gt[valid].long() * num_classes + pred[valid].long(), minlength=num_classes**2
        )
        .reshape(num_classes, num_classes)
        .double()
    )
    tp, gt_n, pred_n = conf.diag(), conf.sum(1), conf.sum(0)
    iou = tp / (gt_n + pred_n - tp).clamp(min=1)
    iou[gt_n == 0] = float("nan")
    ns = len(TOYWORLD_STUFF)
    pct = lambda t: round(100 * float(np.nanmean(t.numpy())), 2)  # noqa: E731
    return {
        "miou": pct(iou),
        "stuff_miou": pct(iou[:ns]),
        "thing_miou": pct(iou[ns:]),
        "per_class_iou": {n: round(100 * float(v), 2) for n, v in zip(TOYWORLD_CLASSES, iou)},
    }


@torch.no_grad()
def evaluate_dense(model, tokenizer, images, labels, template: str, variant="reference") -> dict:
    """Zero-shot dense segmentation mIoU with the value-path readout, plus chance levels."""
    model.eval()
    encoder = build_dense_encoder(model.visual, variant).eval()
    text = encode_texts(model, tokenizer, class_prompts(template))  # (C, D)
    size, preds = model.visual.image_size[0], []
    for i in range(0, len(images), 64):
        feats = encoder(to_clip_input(images[i : i + 64], size))  # (B, D, h, w)
        feats = F.interpolate(feats, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        preds.append(torch.einsum("bdhw,cd->bchw", F.normalize(feats, dim=1), text).argmax(1))
    c = len(TOYWORLD_CLASSES)
    gen = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, c, labels.shape, generator=gen)
    # Random label among the classes present in each image (an oracle knowing the caption).
    present = present_classes(labels).float()
    pick = torch.multinomial(present, labels[0].numel(), replacement=True, generator=gen)
    return {
        "model": miou(torch.cat(preds), labels, c),
        "chance_uniform": miou(uniform, labels, c),
        "chance_present": miou(pick.view(labels.shape), labels, c),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--root", default="", help="ToyWorld folder, built if absent (<output>/world)")
    ap.add_argument("--output", default="output/toy_clip", help="folder for weights + log JSON")
    ap.add_argument("--model-name", default="toy-clip")
    ap.add_argument("--model-config", default=str(REPO / "configs/clip_models/toy-clip.json"))
    ap.add_argument(
        "--init",
        default="",
        help="start from these weights (.safetensors) instead of random ones: more caption "
        "training of a toy-clip, e.g. the same-compute contrastive control of the README",
    )
    ap.add_argument("--num-train", type=int, default=8000, help="world size if built here")
    ap.add_argument("--num-dev", type=int, default=500)
    ap.add_argument("--num-test", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="storage")
    ap.add_argument("--template", default="a photo of a {}.", help="class prompt for evaluation")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    root = Path(args.root) if args.root else out / "world"
    t0 = time.time()
    write_toyworld(
        root,
        num_train=args.num_train,
        num_dev=args.num_dev,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.world_seed,
    )
    images, captions = load_split(root, "train")
    dev_images, dev_captions, dev_labels = load_split(root, "dev", labels=True)
    t_data = time.time() - t0

    torch.manual_seed(args.seed)
    model = create_clip(args.model_name, pretrained=args.init, model_config=args.model_config)
    tokenizer = open_clip.get_tokenizer(args.model_name)
    tokens = tokenizer(captions)
    too_long = (tokens[:, -1] != 0).nonzero()
    if len(too_long):  # the last position is taken: the caption may have been truncated
        raise ValueError(f"caption {captions[int(too_long[0])]!r} exceeds the context length")
    t1 = time.time()
    log = pretrain(
        model,
        images,
        tokens,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        seed=args.seed,
    )
    t_train = time.time() - t1

    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{args.model_name}.safetensors"
    save_file(state, str(weights))
    model = create_clip(args.model_name, pretrained=str(weights), model_config=args.model_config)
    t2 = time.time()
    dev = {
        "global": evaluate_global(
            model, tokenizer, dev_images, dev_captions, dev_labels, args.template
        ),
        "dense": evaluate_dense(model, tokenizer, dev_images, dev_labels, args.template),
    }
    result = {
        "args": vars(args),
        "num_params": sum(p.numel() for p in model.parameters()),
        "weights": str(weights),
        "weights_bytes": weights.stat().st_size,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "seconds": {
            "data": round(t_data, 1),
            "train": round(t_train, 1),
            "eval": round(time.time() - t2, 1),
        },
        "final_loss": log[-1]["loss"] if log else None,
        "dev": dev,
        "log": log,
    }
    (out / f"{args.model_name}.log.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    d = dev["dense"]
    print(
        f"train {t_train:.0f} s; dev retrieval {dev['global']['retrieval_top1']:.3f}, "
        f"dense mIoU {d['model']['miou']} (stuff {d['model']['stuff_miou']}, things "
        f"{d['model']['thing_miou']}; chance {d['chance_uniform']['miou']}, present-random "
        f"{d['chance_present']['miou']})"
    )
    return result
