"""create_clip: model configs, safe weight files, pretrained tags that fail fast offline."""

import hashlib
import json
import time

import pytest
import torch
from conftest import MODEL_CONFIGS, make_tiny_clip
from safetensors.torch import save_file

import pixelclip.modeling.clip as clip_module
from pixelclip.modeling.clip import create_clip

TINY_VIT_JSON = str(MODEL_CONFIGS / "tiny-vit.json")


def _assert_same_weights(model, reference):
    ref = reference.state_dict()
    got = model.state_dict()
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert torch.equal(got[key], value), key


def test_random_model_from_config_is_eval_fp32_cpu():
    model = create_clip("tiny-vit", model_config=TINY_VIT_JSON)
    assert not model.training
    params = list(model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
    assert model.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "module", "safetensors"])
def test_local_files_round_trip(tmp_path, layout, caplog):
    reference = make_tiny_clip("tiny-vit", seed=7)
    sd = reference.state_dict()
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        payload = {
            "plain": sd,
            "model": {"model": sd, "iteration": 3},
            "state_dict": {"state_dict": sd},
            "module": {f"module.{k}": v for k, v in sd.items()},
        }[layout]
        torch.save(payload, path)
    caplog.clear()
    model = create_clip("tiny-vit", pretrained=str(path))
    _assert_same_weights(model, reference)
    assert "No pretrained weights loaded" not in caplog.text  # open_clip's untrue warning


def test_mismatched_weights_name_the_keys(tmp_path):
    sd = make_tiny_clip("tiny-vit").state_dict()
    sd["visual.extra"] = sd.pop("visual.proj")
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing keys \['visual.proj'\].*\['visual.extra'\]"):
        create_clip("tiny-vit", pretrained=str(path))
    sd = make_tiny_clip("tiny-vit").state_dict()
    sd["visual.proj"] = torch.zeros(3, 3)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"visual.proj: file \(3, 3\) vs model \(64, 32\)"):
        create_clip("tiny-vit", pretrained=str(path))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": _Evil()}}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        create_clip("tiny-vit", pretrained=str(path))


def test_torchscript_archive_only_with_a_published_digest(tmp_path, monkeypatch):
    reference = make_tiny_clip("tiny-vit", seed=5)
    path = tmp_path / "ViT-tiny.pt"
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated in torch 2.14
        torch.jit.script(reference).save(str(path))
    with pytest.raises(ValueError, match=r"TorchScript archive \(SHA-256 [0-9a-f]{64}\) that"):
        create_clip("tiny-vit", pretrained=str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(clip_module, "_known_openai_sha256", lambda: {digest})
    _assert_same_weights(create_clip("tiny-vit", pretrained=str(path)), reference)


def test_missing_file_and_unknown_names():
    with pytest.raises(FileNotFoundError, match="no weight file"):
        create_clip("tiny-vit", pretrained="/nonexistent/weights.pt")
    with pytest.raises(ValueError, match=r"unknown open_clip model 'no-such-model'.*list_models"):
        create_clip("no-such-model")
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope' for model 'tiny-vit'"):
        create_clip("tiny-vit", pretrained="nope")


def test_bad_model_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="MODEL_CONFIG"):
        create_clip("x", model_config=str(tmp_path / "x.json"))
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON"):
        create_clip("x", model_config=str(bad))
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="'vision_cfg'"):
        create_clip("x", model_config=str(bad))
    with pytest.raises(ValueError, match="set it to 'tiny-vit'"):
        create_clip("other-name", model_config=TINY_VIT_JSON)


def test_tag_offline_fails_fast_with_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        create_clip("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path), force_quick_gelu=True)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    for part in ("ViT-B-16:openai", "HF_HUB_OFFLINE", "MODEL.CLIP.CACHE_DIR", "local weight file"):
        assert part in message


def test_tag_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(clip_module, "_reachable", lambda host: False)
    with pytest.raises(FileNotFoundError, match="unreachable"):
        create_clip("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path), force_quick_gelu=True)


def test_openai_tag_requires_quick_gelu():
    with pytest.raises(ValueError, match="FORCE_QUICK_GELU"):
        create_clip("ViT-B-16", pretrained="openai")
