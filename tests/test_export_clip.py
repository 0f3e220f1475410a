"""tools/export_clip.py (pixelclip.checkpoint): the fine-tuned CLIP written as an open_clip
checkpoint that ``open_clip.create_model(name, pretrained=file)`` loads directly."""

import copy
import math
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import assert_close_to_float64, load_script
from test_reference_checkpoint import _source, to_reference_layout

from pixelclip.checkpoint.cli import export_clip_main

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO / "configs" / "clip_models"


def _save(tmp_path, sd, name="model_final.pth"):
    path = tmp_path / name
    torch.save({"model": sd, "iteration": 3}, path)
    return str(path)


def _images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, suffix", [("tiny-vit", ".safetensors"), ("tiny-vit", ".pt"), ("tiny-convnext", ".bin")]
)
def test_export_loads_in_open_clip(tmp_path, name, suffix):
    model = _source(name)  # every tensor perturbed away from its random initialisation
    out = tmp_path / f"clip{suffix}"
    args = [_save(tmp_path, model.state_dict()), str(out)]
    if name == "tiny-vit":  # the check inside the tool (creating a ConvNeXt costs ~1 s)
        args += ["--model-name", name, "--model-config", str(MODEL_CONFIGS / f"{name}.json")]
    assert export_clip_main(args) == 0

    clip = open_clip.create_model(name, pretrained=str(out)).eval()
    ours = model.state_dict()
    for key, value in clip.state_dict().items():
        if key.startswith("visual."):
            assert torch.equal(value, ours["backbone.encoder.visual." + key[7:]]), key
        elif key != "logit_scale":
            assert torch.equal(value, ours["sem_seg_head.text." + key]), key
    assert clip.logit_scale.item() == pytest.approx(math.log(100.0))
    with torch.no_grad():
        expected = model.backbone.encoder.encode_global(_images())
        assert torch.allclose(clip.encode_image(_images()), expected, atol=1e-6)
        other = model.teacher.encoder.encode_global(_images())
        assert not torch.allclose(other, expected, atol=1e-3)  # the comparison can fail
        texts = ["a photo of a cat", "grass"]
        tokens = open_clip.get_tokenizer(name)(texts)
        # Ours runs at the real length, open_clip at the full context: equal up to rounding.
        got_text = model.sem_seg_head.text.encode_text(texts)
        expected_text64 = copy.deepcopy(clip).double().encode_text(tokens)
        assert_close_to_float64(got_text, expected_text64, clip.encode_text(tokens))


def test_export_teacher_tower(tmp_path):
    model = _source("tiny-vit")
    out = tmp_path / "teacher.safetensors"
    assert export_clip_main([_save(tmp_path, model.state_dict()), str(out), "--teacher"]) == 0
    clip = open_clip.create_model("tiny-vit", pretrained=str(out)).eval()
    with torch.no_grad():
        got = clip.encode_image(_images())
        assert torch.allclose(got, model.teacher.encoder.encode_global(_images()), atol=1e-6)
        assert not torch.allclose(got, model.backbone.encoder.encode_global(_images()), atol=1e-3)


def test_export_from_reference_checkpoint_and_logit_scale_sources(tmp_path):
    model = _source("tiny-vit")
    ref = to_reference_layout(model.state_dict())
    ref["sem_seg_head.predictor.clip_model.logit_scale"] = torch.tensor(3.5)
    ckpt = _save(tmp_path, ref, "reference.pth")

    assert export_clip_main([ckpt, str(tmp_path / "a.safetensors")]) == 0
    clip = open_clip.create_model("tiny-vit", pretrained=str(tmp_path / "a.safetensors"))
    assert clip.logit_scale.item() == 3.5  # the reference keeps CLIP's value
    visual = model.state_dict()["backbone.encoder.visual.conv1.weight"]
    assert torch.equal(clip.visual.conv1.weight, visual)

    base = open_clip.create_model("tiny-vit").state_dict()
    base["logit_scale"] = torch.tensor(2.25)
    torch.save(base, tmp_path / "base.pt")
    args = [ckpt, str(tmp_path / "b.pt"), "--base-weights", str(tmp_path / "base.pt")]
    assert export_clip_main(args) == 0
    assert torch.load(tmp_path / "b.pt", weights_only=True)["logit_scale"].item() == 2.25
    assert export_clip_main(args[:2] + ["--overwrite", "--logit-scale", "1.5"] + args[2:]) == 0
    assert torch.load(tmp_path / "b.pt", weights_only=True)["logit_scale"].item() == 1.5


def test_wrong_model_name_fails_and_writes_nothing(tmp_path, capsys):
    model = _source("tiny-vit")
    out = tmp_path / "out" / "clip.safetensors"
    ckpt = _save(tmp_path, model.state_dict())
    config = str(MODEL_CONFIGS / "tiny-convnext.json")
    args = [ckpt, str(out), "--model-name", "tiny-convnext", "--model-config", config]
    assert export_clip_main(args) == 1
    assert "open_clip cannot load the export into 'tiny-convnext'" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # no output, no temporary file left behind


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert export_clip_main([str(tmp_path / "missing.pth"), str(tmp_path / "o.pt")]) == 1
    assert "missing.pth" in capsys.readouterr().err
    no_text = {
        k: v for k, v in _source("tiny-vit").state_dict().items() if "sem_seg_head.text" not in k
    }
    assert export_clip_main([_save(tmp_path, no_text), str(tmp_path / "o.pt")]) == 1
    assert "no text tower (sem_seg_head.text.*)" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        load_script("tools/export_clip.py", "export_clip_tool").main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = ["--teacher", "--logit-scale", "--base-weights", "--model-name", "--model-config"]
    for option in options + ["--force-quick-gelu", "--overwrite", "open_clip.create_model"]:
        assert option in text
