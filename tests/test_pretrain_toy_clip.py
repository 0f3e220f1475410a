"""Contrastive pretraining of the small ToyWorld CLIP (pixelclip.toyworld.pretrain, run by
tools/pretrain_toy_clip.py)."""

import copy
import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, assert_close_to_float64, load_script, make_tiny_clip
from safetensors.torch import load_file

from pixelclip.modeling.clip import create_clip
from pixelclip.toyworld import TOYWORLD_CLASSES, generate_toyworld, pretrain


def test_toy_clip_config_fits_budget_and_captions():
    cfg = json.loads((REPO / "configs/clip_models/toy-clip.json").read_text())
    assert cfg["text_cfg"]["vocab_size"] == 49408  # CLIP's BPE vocabulary
    with torch.random.fork_rng():
        model = open_clip.create_model("toy-clip", pretrained=None)
    assert isinstance(model, open_clip.CLIP)
    assert 2 * sum(p.numel() for p in model.parameters()) < 10e6  # fp16 file under 10 MB
    # The longest possible caption (3 stuff words, 4 things) still ends inside the context.
    tokenizer = open_clip.get_tokenizer("toy-clip")
    longest = "a picture of grass, water, sand, a cross, a ring, a star and a tree."
    ids = tokenizer([longest])[0]
    assert ids[-1] == 0 and len(ids) == cfg["text_cfg"]["context_length"]


def test_contrastive_loss_matches_a_naive_computation():
    model = make_tiny_clip()
    images = torch.randn(3, 3, 64, 64)
    tokens = open_clip.get_tokenizer("tiny-vit")(["a ball", "grass", "a photo of sky"])

    @torch.no_grad()
    def naive(model, images):
        """One image and one text at a time; the cross-entropies summed in Python floats."""
        fi = [F.normalize(model.encode_image(images[i : i + 1])[0], dim=0) for i in range(3)]
        ft = [F.normalize(model.encode_text(tokens[i : i + 1])[0], dim=0) for i in range(3)]
        scale = math.exp(model.logit_scale.item())
        total = 0.0
        for i in range(3):
            row = [scale * float(fi[i] @ ft[j]) for j in range(3)]
            col = [scale * float(fi[j] @ ft[i]) for j in range(3)]
            total += -row[i] + math.log(sum(math.exp(v) for v in row))
            total += -col[i] + math.log(sum(math.exp(v) for v in col))
        return torch.tensor(total / 6, dtype=torch.float64)

    with torch.no_grad():
        loss = pretrain.contrastive_loss(model, images, tokens)
    expected64 = naive(copy.deepcopy(model).double(), images.double())
    assert_close_to_float64(loss, expected64, naive(model, images))


def test_a_few_steps_lower_the_loss():
    world = generate_toyworld(8, image_size=64, seed=0)
    images = torch.from_numpy(world.images)
    tokens = open_clip.get_tokenizer("tiny-vit")(world.captions)
    model = make_tiny_clip()

    def loss_now():
        model.eval()
        with torch.no_grad():
            x = pretrain.to_clip_input(images, 64)
            return pretrain.contrastive_loss(model, x, tokens).item()

    before = loss_now()
    log = pretrain.pretrain(
        model, images, tokens, steps=3, batch_size=8, lr=5e-3, weight_decay=0.1, warmup=1, seed=0
    )
    assert [e["step"] for e in log] == [0, 1, 2]
    assert loss_now() < before - 0.05


def test_miou_by_hand():
    gt = torch.tensor([[0, 0, 6, 255]], dtype=torch.uint8)
    pred = torch.tensor([[0, 6, 6, 3]])
    out = pretrain.miou(pred, gt, len(TOYWORLD_CLASSES))
    # class 0: tp 1, gt 2, pred 1 -> 1/2; class 6: tp 1, gt 1, pred 2 -> 1/2; others: no gt.
    assert out["per_class_iou"]["sky"] == 50.0 and out["per_class_iou"]["ball"] == 50.0
    assert out["miou"] == 50.0 and out["stuff_miou"] == 50.0 and out["thing_miou"] == 50.0
    assert math.isnan(out["per_class_iou"]["grass"])


@pytest.mark.slow
def test_end_to_end_writes_loadable_weights_and_log(tmp_path):
    root, out = tmp_path / "world", tmp_path / "out"
    config = str(REPO / "configs/clip_models/tiny-vit.json")
    settings = ["--root", str(root), "--model-name", "tiny-vit", "--model-config", config,
                "--num-train", "8", "--num-dev", "4", "--num-test", "2", "--image-size", "64",
                "--steps", "2", "--batch-size", "4", "--precision", "fp32"]  # fmt: skip
    result = pretrain.main([*settings, "--output", str(out)])
    log = json.loads((out / "tiny-vit.log.json").read_text())
    assert [e["step"] for e in log["log"]] == [0, 1]
    assert log["final_loss"] == result["final_loss"] and math.isfinite(log["final_loss"])
    for key in ("retrieval_top1", "retrieval_top1_same_classes", "top_class_present"):
        assert 0.0 <= log["dev"]["global"][key] <= 1.0
    dense = log["dev"]["dense"]
    assert set(dense) == {"model", "chance_uniform", "chance_present"}
    assert 0.0 <= dense["model"]["miou"] <= 100.0
    saved = load_file(str(out / "tiny-vit.safetensors"))
    model = create_clip("tiny-vit", pretrained=str(out / "tiny-vit.safetensors"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    # Same seed, same command (through the script in tools/): the same weights.
    tool = load_script("tools/pretrain_toy_clip.py", "pretrain_toy_clip_tool")
    tool.main([*settings, "--output", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "tiny-vit.log.json").read_text())
    assert again["weights_sha256"] == log["weights_sha256"]
