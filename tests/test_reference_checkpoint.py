"""Checkpoints of the reference PixelCLIP code: detection, conversion, loading through
MODEL.WEIGHTS (PixelCLIPCheckpointer) and the converter tool, incomplete and malicious files, and
the configs paired with the released checkpoints.

Synthetic reference checkpoints are written here from a tiny model's state dict by the inverse of
the documented mapping (docs/REFERENCE_CHECKPOINT.md), plus the keys the reference has and we drop.
"""

import functools
import logging
import math
import pickle
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from test_meta_arch import tiny_cfg

from pixelclip.checkpoint import (
    PixelCLIPCheckpointer,
    convert_reference_state_dict,
    is_reference_state_dict,
    read_checkpoint,
)
from pixelclip.checkpoint.cli import convert_reference_main
from pixelclip.config import add_pixelclip_config

REPO = Path(__file__).resolve().parents[1]
TEXT_LEFTOVERS = (
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "ln_final.weight",
    "ln_final.bias",
)


def to_reference_layout(sd: dict, with_teacher: bool = True) -> dict:
    """Inverse of the documented mapping, written independently of pixelclip.checkpoint."""
    ref = {}
    for key, value in sd.items():
        if key.startswith("backbone.encoder.visual."):
            ref["sem_seg_head.predictor.clip_model.visual." + key[24:]] = value
        elif key.startswith("sem_seg_head.text."):
            ref["sem_seg_head.predictor.clip_model." + key[18:]] = value
        elif key == "sem_seg_head.prompts.prompt_tokens":
            ref["sem_seg_head.predictor.prompt_tokens"] = value
        elif key.startswith("sem_seg_head.decoder."):
            ref["head." + key[21:]] = value
        elif key.startswith("teacher.encoder.visual."):
            if with_teacher:
                ref["teacher_encoder.visual." + key[23:]] = value
        else:
            raise AssertionError(f"unexpected key of our model: {key}")
    ref["sem_seg_head.predictor.clip_model.logit_scale"] = torch.tensor(math.log(100.0))
    if with_teacher:
        for name in TEXT_LEFTOVERS:
            ref["teacher_encoder." + name] = sd["sem_seg_head.text." + name].clone()
        ref["teacher_encoder.logit_scale"] = torch.tensor(math.log(100.0))
    return ref


def _build(name: str, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(tiny_cfg(name, SEED=seed))
    return model.eval()


@functools.cache
def _tiny(name: str):
    """One tiny model per family and two states of it that differ in every tensor (independent
    noise on its random initialisation, so the student also differs from the teacher):
    (model, source state, other state). Tests start from and restore ``source``."""
    model = _build(name, seed=1)
    g = torch.Generator().manual_seed(0)
    source, other = (
        {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
        for _ in range(2)
    )
    model.load_state_dict(source)
    return model, source, other


def _source(name: str):
    """The tiny model holding its source state."""
    model, source, _ = _tiny(name)
    model.load_state_dict(source)
    return model


@pytest.fixture(params=["tiny-vit", "tiny-convnext"])
def models(request):
    """(model holding the other state, source state, other state), both families."""
    model, source, other = _tiny(request.param)
    model.load_state_dict(other)
    yield model, source, other
    model.load_state_dict(source)


@pytest.fixture
def vit_models():
    model, source, other = _tiny("tiny-vit")
    model.load_state_dict(other)
    yield model, source, other
    model.load_state_dict(source)


def _images():
    image = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(3))
    return [{"image": image.to(torch.uint8), "height": 48, "width": 56}]


def _logits(model):
    model.set_vocabulary(["cat", "grass", "sky, clouds"])
    with torch.no_grad():
        return torch.stack([r["sem_seg"] for r in model(_images())])


def _assert_same_state(model, expected: dict):
    ours, theirs = model.state_dict(), expected
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_documented_vit_b16_layout_converts_completely():
    """The 481 tensor names of docs/REFERENCE_CHECKPOINT.md (tiny stand-in tensors)."""
    t = torch.zeros(1)
    block = ["attn.in_proj_weight", "attn.in_proj_bias"]
    block += [f"{m}.{s}" for m in ("attn.out_proj", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2")
              for s in ("weight", "bias")]  # fmt: skip
    blocks = [f"transformer.resblocks.{i}.{n}" for i in range(12) for n in block]
    visual = ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight",
              "ln_pre.bias", "ln_post.weight", "ln_post.bias", "proj"] + blocks  # fmt: skip
    text = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
            "text_projection"] + blocks  # fmt: skip
    conv = ["0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias"]
    head = ["conv0.weight", "conv0.bias", "up1.weight", "up1.bias", "up2.weight", "up2.bias",
            "proj.weight", "proj.bias"]  # fmt: skip
    head += [f"conv{i}.double_conv.{c}" for i in (1, 2) for c in conv]
    ref = {"sem_seg_head.predictor.prompt_tokens": t}
    clip = "sem_seg_head.predictor.clip_model."
    ref.update({clip + "visual." + n: t for n in visual})
    ref.update({clip + n: t for n in text + ["logit_scale"]})
    ref.update({"teacher_encoder.visual." + n: t for n in visual})
    ref.update({"teacher_encoder." + n: t for n in TEXT_LEFTOVERS + ("logit_scale",)})
    ref.update({"head." + n: t for n in head})
    assert len(ref) == 481 and is_reference_state_dict(ref)

    ours, report = convert_reference_state_dict(ref)
    assert report.unmapped == [] and report.absent == [] and not report.teacher_from_student
    assert len(ours) == 474 and len(report.dropped) == 7
    assert ours.keys() == {
        *("backbone.encoder.visual." + n for n in visual),
        *("teacher.encoder.visual." + n for n in visual),
        *("sem_seg_head.text." + n for n in text),
        *("sem_seg_head.decoder." + n for n in head),
        "sem_seg_head.prompts.prompt_tokens",
    }
    assert set(report.dropped) == {clip + "logit_scale", "teacher_encoder.logit_scale"} | {
        "teacher_encoder." + n for n in TEXT_LEFTOVERS
    }


def test_round_trip_gives_identical_logits(models):
    model, source, other = models
    ref = to_reference_layout(source)
    assert is_reference_state_dict(ref) and not is_reference_state_dict(source)
    ours, report = convert_reference_state_dict(ref)
    assert report.unmapped == [] and report.absent == []

    before = _logits(model)
    model.load_state_dict(ours, strict=True)
    _assert_same_state(model, source)
    converted = _logits(model)
    model.load_state_dict(other)
    model.load_state_dict(source, strict=True)  # our own state dict with the same values
    assert torch.equal(converted, _logits(model))
    assert not torch.allclose(before, converted)  # the comparison can fail


def test_model_weights_loads_reference_file_directly(models, tmp_path, caplog):
    model, source, _ = models
    path = tmp_path / "pixelclip_reference.pth"
    ref = to_reference_layout(source)
    ref["sem_seg_head.predictor.some_new_buffer"] = torch.zeros(2)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    torch.save({"model": ref, "optimizer": optimizer, "iteration": 9999}, path)

    with caplog.at_level(logging.INFO, logger="pixelclip"):
        extra = PixelCLIPCheckpointer(model).resume_or_load(str(path), resume=False)
    _assert_same_state(model, source)
    assert "optimizer" not in extra and extra.get("iteration") == 9999
    assert "sem_seg_head.predictor.some_new_buffer" in caplog.text  # every unmapped key reported
    assert "teacher_encoder.logit_scale" in caplog.text  # and every dropped one


def test_missing_teacher_starts_from_the_student(vit_models, tmp_path):
    model, source, _ = vit_models
    ref = to_reference_layout(source, with_teacher=False)
    ours, report = convert_reference_state_dict(ref)
    assert report.teacher_from_student and any("teacher" in a for a in report.absent)
    path = tmp_path / "no_teacher.pth"
    torch.save({"model": ref}, path)
    PixelCLIPCheckpointer(model).load(str(path))
    state = model.state_dict()
    for key, value in source.items():
        if key.startswith("teacher.encoder.visual."):
            student = source["backbone.encoder.visual." + key[23:]]
            assert torch.equal(state[key], student) and not torch.equal(state[key], value)
        else:
            assert torch.equal(state[key], value), key


def test_converter_tool_round_trip(vit_models, tmp_path):
    model, source, other = vit_models
    inp, out, out_st = tmp_path / "ref.pth", tmp_path / "ours.pth", tmp_path / "ours.safetensors"
    torch.save({"model": to_reference_layout(source), "iteration": 7}, inp)
    assert convert_reference_main([str(inp), str(out)]) == 0
    assert convert_reference_main([str(inp), str(out_st)]) == 0
    assert convert_reference_main([str(inp), str(out)]) == 1  # no silent overwrite
    saved = torch.load(out, weights_only=True)
    assert saved["iteration"] == 7 and not is_reference_state_dict(saved["model"])
    for path in (out, out_st):
        model.load_state_dict(other)
        PixelCLIPCheckpointer(model).load(str(path))
        _assert_same_state(model, source)


def test_converter_tool_checks_against_config_and_strict(tmp_path, capsys):
    source = _source("tiny-vit")
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(tiny_cfg("tiny-vit").dump())
    ref = to_reference_layout(source.state_dict())
    inp = tmp_path / "ref.pth"
    torch.save(ref, inp)  # a bare state dict is accepted too
    config = ["--config-file", str(cfg_file)]
    assert convert_reference_main([str(inp), str(tmp_path / "a.pth"), *config]) == 0
    ref["sem_seg_head.predictor.unknown"] = torch.zeros(1)
    torch.save(ref, inp)
    assert convert_reference_main([str(inp), str(tmp_path / "b.pth"), "--strict"]) == 1
    assert "sem_seg_head.predictor.unknown" in capsys.readouterr().out
    assert not (tmp_path / "b.pth").exists()
    del ref["head.proj.bias"]
    torch.save(ref, inp)
    assert convert_reference_main([str(inp), str(tmp_path / "c.pth"), *config]) == 1
    assert "sem_seg_head.decoder.proj.bias" in capsys.readouterr().err
    assert not (tmp_path / "c.pth").exists()


def test_incomplete_reference_names_what_is_missing(vit_models, tmp_path):
    model, source, _ = vit_models
    ref = to_reference_layout(source)
    clip = "sem_seg_head.predictor.clip_model."
    del ref[clip + "ln_final.weight"]
    del ref[clip + "transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError) as info:
        convert_reference_state_dict(ref, source="cut.pth")
    assert "cut.pth" in str(info.value)
    assert clip + "ln_final.weight" in str(info.value)
    assert clip + "transformer.resblocks.1.mlp.c_fc.bias" in str(info.value)

    ref = to_reference_layout(source)
    student_key = next(k for k in ref if k.startswith(clip + "visual."))
    del ref[student_key]  # teacher still has it: the student is incomplete
    with pytest.raises(ValueError, match=student_key.replace(".", r"\.")):
        convert_reference_state_dict(ref)

    ref = to_reference_layout(source)
    del ref["head.conv0.weight"], ref["sem_seg_head.predictor.prompt_tokens"]
    path = tmp_path / "no_decoder.pth"
    torch.save({"model": ref}, path)
    with pytest.raises(ValueError) as info:  # with a model: strict, named keys
        PixelCLIPCheckpointer(model).load(str(path))
    message = str(info.value)
    assert "sem_seg_head.decoder.conv0.weight" in message
    assert "sem_seg_head.prompts.prompt_tokens" in message


def test_checkpoint_that_does_not_pair_with_the_config_is_an_error(tmp_path):
    path = tmp_path / "vit_reference.pth"
    torch.save({"model": to_reference_layout(_source("tiny-vit").state_dict())}, path)
    convnext = _source("tiny-convnext")
    with pytest.raises(ValueError) as info:
        PixelCLIPCheckpointer(convnext).load(str(path))
    message = str(info.value)
    assert "missing keys ['backbone.encoder.visual.head.proj.weight'" in message
    assert "unexpected keys ['backbone.encoder.visual.class_embedding'" in message
    assert "MODEL.CLIP.MODEL_NAME" in message
    _assert_same_state(convnext, _tiny("tiny-convnext")[1])  # nothing was loaded
    cfg = tiny_cfg("tiny-vit", **{"MODEL.PROMPT.NUM_CLUSTERS": 4})  # k = 4, the file has 8
    with pytest.raises(ValueError, match=r"prompt_tokens: file \(8, 4, 64\) vs model \(4, 4, 64\)"):
        PixelCLIPCheckpointer(build_model(cfg)).load(str(path))


def test_unreadable_files_give_clear_errors(tmp_path):
    source = _source("tiny-vit")
    path = tmp_path / "truncated.pth"
    torch.save({"model": to_reference_layout(source.state_dict())}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth.*truncated or corrupt"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PixelCLIPCheckpointer(source).load(str(path))
    assert convert_reference_main([str(path), str(tmp_path / "out.pth")]) == 1
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], bad)
    with pytest.raises(ValueError, match="expected a dict"):
        read_checkpoint(bad)


class _Payload:
    """Unpickling this object creates a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_malicious_pickle_is_refused(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    evil = {
        "model": {"sem_seg_head.predictor.prompt_tokens": torch.zeros(1)},
        "x": _Payload(marker),
    }
    if suffix == ".pth":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    # The payload works when unpickled unsafely (so this test can fail)...
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()
    # ...but none of our readers unpickles it.
    model = _source("tiny-vit")
    with pytest.raises(ValueError, match="refused"):
        PixelCLIPCheckpointer(model).load(str(path))
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(path)
    assert convert_reference_main([str(path), str(tmp_path / "out.pth")]) == 1
    assert not marker.exists()


def test_own_checkpoints_still_load(vit_models, tmp_path):
    model, source, other = vit_models  # the model holds `other`
    prompts = model.sem_seg_head.prompts.prompt_tokens
    optimizer = torch.optim.AdamW([prompts], lr=1e-3)
    prompts.grad = torch.ones_like(prompts)
    optimizer.step()  # AdamW state with tensors, as in a training checkpoint
    prompts.grad = None
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    saver = PixelCLIPCheckpointer(
        model, save_dir=str(tmp_path), optimizer=optimizer, scheduler=scheduler
    )
    saver.save("model_final", iteration=41)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(source)
    fresh_optimizer = torch.optim.AdamW([prompts], lr=1e-3)
    loader = PixelCLIPCheckpointer(model, optimizer=fresh_optimizer)
    extra = loader.load(str(tmp_path / "model_final.pth"))
    _assert_same_state(model, expected)
    assert extra["iteration"] == 41
    assert int(fresh_optimizer.state_dict()["state"][0]["step"]) == 1


@pytest.mark.parametrize(
    "name, clip, resolution, temperature, quick_gelu",
    [
        ("pixelclip_vit_base", "ViT-B-16", 320, 100.0, True),
        ("pixelclip_vit_base_dino", "ViT-B-16", 320, 100.0, True),
        ("pixelclip_convnext_base", "convnext_base_w_320", 640, 1.0, False),
        ("pixelclip_convnext_base_dino", "convnext_base_w_320", 640, 1.0, False),
    ],
)
def test_reference_configs_pair_with_released_checkpoints(
    name, clip, resolution, temperature, quick_gelu
):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "reference" / f"{name}.yaml"))
    assert cfg.MODEL.WEIGHTS == f"weights/{name}.pth"
    assert cfg.MODEL.CLIP.MODEL_NAME == clip and cfg.MODEL.CLIP.RESOLUTION == resolution
    assert cfg.MODEL.PIXELCLIP.TEMPERATURE == temperature
    assert cfg.MODEL.CLIP.FORCE_QUICK_GELU == quick_gelu
    assert cfg.MODEL.CLIP.PRETRAINED == ""  # every weight comes from the checkpoint
