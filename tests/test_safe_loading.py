"""One safe way in: crafted pickles and YAML through every entry point, damaged files, strict loads,
resume fallbacks and the permissions of written files (docs/RELIABILITY.md, sections 2 and 6).

Every crafted file carries a payload that creates a marker file when it is unpickled (or, for
YAML, constructed) unsafely; the tests first show that the payload works, then that no entry point
lets it run.
"""

import argparse
import logging
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, load_script
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from test_meta_arch import tiny_cfg
from test_reference_checkpoint import to_reference_layout

from pixelclip.checkpoint import (
    PixelCLIPCheckpointer,
    atomic_save,
    load_weights,
    merge_config_file,
    read_checkpoint,
    read_config_dict,
    write_atomically,
)
from pixelclip.config import add_pixelclip_config
from pixelclip.engine.trainer import check_output_dir
from pixelclip.inference.predictor import Predictor, build_config
from pixelclip.masks.dino import load_dino_state_dict
from pixelclip.masks.sam import load_sam, sam_model_type
from pixelclip.modeling.clip import create_clip


class _Payload:
    """Unpickling this object creates a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "the payload ran"


def _evil_pickle(path: Path, marker: Path, state: dict | None = None) -> str:
    """A torch.save file whose state dict looks right but carries the payload."""
    torch.save({"model": dict(state or {"w": torch.zeros(2)}), "x": _Payload(marker)}, path)
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload works when unpickled unsafely
    assert marker.exists()
    marker.unlink()
    return str(path)


def _evil_yaml(path: Path, marker: Path) -> str:
    """A YAML config with a Python tag that creates the marker if constructed unsafely."""
    text = f"MODEL:\n  WEIGHTS: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    yaml.unsafe_load(text)
    assert marker.exists()  # constructed unsafely, the tag runs code
    marker.unlink()
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(tiny_cfg()).eval()


# ------------------------------------------------------------------ crafted pickles and YAML
def test_crafted_pickle_through_every_weight_entry_point(tmp_path, marker, tiny_model, capsys):
    evil = _evil_pickle(tmp_path / "model_final.pth", marker, tiny_model.state_dict())
    refused = r"model_final\.pth.*refused.*weights_only"
    with pytest.raises(
        ValueError, match=refused
    ):  # train_net MODEL.WEIGHTS, evaluate_all, quickstart
        load_weights(tiny_model, evil)
    with pytest.raises(ValueError, match=refused):  # train_net / eval-only through detectron2
        PixelCLIPCheckpointer(tiny_model).resume_or_load(evil, resume=False)
    with pytest.raises(ValueError, match=refused):  # pixelclip.Predictor
        Predictor(tiny_cfg(), weights=evil)
    (tmp_path / "config.yaml").write_text(tiny_cfg().dump())
    with pytest.raises(ValueError, match=refused):  # Predictor("run/model_final.pth")
        Predictor(evil)
    with pytest.raises(ValueError, match=refused):
        create_clip(
            "tiny-vit",
            pretrained=evil,
            model_config=str(REPO / "configs/clip_models/tiny-vit.json"),
        )
    with pytest.raises(ValueError, match=refused):
        load_dino_state_dict(evil)
    with pytest.raises(ValueError, match=refused):
        load_sam(evil)
    for tool in ("convert_reference_checkpoint", "export_clip"):
        module = load_script(f"tools/{tool}.py", f"safe_{tool}")
        assert module.main([evil, str(tmp_path / f"{tool}_out.pth")]) == 1
        assert "refused" in capsys.readouterr().err
    demo = load_script("demo/demo.py", "safe_demo")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    config = tmp_path / "config.yaml"
    args = ["--config-file", str(config), "--weights", evil, "--input", str(image)]
    assert demo.main([*args, "--vocabulary", "sky"]) == 2
    assert "refused" in capsys.readouterr().err
    analysis = load_script("tools/analyze_clusters.py", "safe_analyze_clusters")
    argv = ["--config-file", str(config), "--weights", evil, "--vocabulary", "sky",
            "--output", str(tmp_path / "analysis")]  # fmt: skip
    assert analysis.main(argv) == 2
    assert "refused" in capsys.readouterr().err


def test_crafted_checkpoint_as_the_resume_point(tmp_path, marker, tiny_model, caplog):
    """``--resume`` never unpickles a planted file; with nothing else readable it stops clearly."""
    _evil_pickle(tmp_path / "model_0000009.pth", marker, tiny_model.state_dict())
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(ValueError, match="last_checkpoint names .*model_0000009.pth.*refused"):
        PixelCLIPCheckpointer(tiny_model, str(tmp_path)).resume_or_load("", resume=True)


def test_env_variable_cannot_turn_unpickling_back_on(tmp_path, marker, monkeypatch):
    evil = _evil_pickle(tmp_path / "w.pth", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(evil)


def test_generate_masks_refuses_a_crafted_sam_checkpoint(tmp_path, marker, capsys):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "photos" / "a.png")
    evil = _evil_pickle(tmp_path / "sam.pth", marker)
    from pixelclip.masks import cli as tool

    argv = ["--input", str(tmp_path / "photos"), "--output", str(tmp_path / "masks"),
            "--source", "sam", "--sam-checkpoint", evil, "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    assert "cannot load the sam model" in capsys.readouterr().err


def _config_with(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_crafted_yaml_through_every_config_entry_point(tmp_path, marker, capsys):
    evil = _evil_yaml(tmp_path / "evil.yaml", marker)
    child = _config_with(tmp_path, "_BASE_: evil.yaml\nSEED: 3\n", "child.yaml")
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    for path, named in ((evil, r"evil\.yaml"), (child, r"evil\.yaml")):
        with pytest.raises(ValueError, match=named + r".*refused.*Python object tags"):
            merge_config_file(cfg.clone(), path)
        with pytest.raises(ValueError, match=named + ".*refused"):  # Predictor, demo
            build_config(path)
    # detectron2's own merge_from_file would have run the payload (its default allow_unsafe):
    try:
        cfg.clone().merge_from_file(evil)
    except Exception:  # noqa: BLE001 -- the file object it opened is not a config value
        pass
    assert marker.exists()
    marker.unlink()

    analysis = load_script("tools/analyze_clusters.py", "safe_analyze_clusters")
    argv = ["--config-file", evil, "--vocabulary", "sky", "--output", str(tmp_path / "a")]
    assert analysis.main(argv) == 2
    assert re.search(r"evil\.yaml.*refused", capsys.readouterr().err)

    # The config.yaml Predictor finds beside a checkpoint.
    run = tmp_path / "run"
    run.mkdir()
    _evil_yaml(run / "config.yaml", marker)
    torch.save({"model": {}}, run / "model_final.pth")
    with pytest.raises(ValueError, match=r"config\.yaml.*refused"):
        Predictor(run / "model_final.pth")
    # train_net's setup(), with detectron2's arguments.
    from pixelclip.engine import setup

    args = argparse.Namespace(config_file=child, opts=[], eval_only=True, resume=False)
    with pytest.raises(ValueError, match=r"evil\.yaml.*refused"):
        setup(args)
    from pixelclip.evaluation import evaluate_all

    with pytest.raises(ValueError, match=r"evil\.yaml.*refused"):
        evaluate_all.setup_cfg(
            argparse.Namespace(config_file=evil, opts=[], protocol=None, weights="", output="o")
        )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("_BASE_: https://example.invalid/base.yaml\n", "only local files"),
        ("_BASE_: missing.yaml\n", "not found.*missing.yaml"),
        ("_BASE_: c.yaml\n", "_BASE_ cycle"),
        ("SEED: 1\nSEED: 2\n", "duplicate key 'SEED'"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("SEED: [1\n", "not a valid YAML config"),
        ("NOT_A_KEY: 1\n", r"c\.yaml: Non-existent config key: NOT_A_KEY"),
        ("VERSION: 1\n", "VERSION 1 is not supported"),
        ("_BASE_: 3\n", "_BASE_ must be a path"),
    ],
)
def test_bad_config_files_name_the_file(tmp_path, text, match):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        merge_config_file(cfg, _config_with(tmp_path, text))


def test_configs_read_bases_like_detectron2(tmp_path):
    """A relative ``_BASE_`` chain merges mapping by mapping, the file's own keys last."""
    (tmp_path / "sub").mkdir()
    _config_with(tmp_path, "SEED: 1\nMODEL:\n  PIXELCLIP:\n    MOMENTUM: 0.5\n", "base.yaml")
    _config_with(tmp_path, "_BASE_: ../base.yaml\nMODEL:\n  PIXELCLIP:\n    SINKHORN_ITERS: 7\n",
                 "sub/mid.yaml")  # fmt: skip
    leaf = _config_with(tmp_path, "_BASE_: [sub/mid.yaml]\nSEED: 5\n", "leaf.yaml")
    assert read_config_dict(leaf) == {
        "SEED": 5,
        "MODEL": {"PIXELCLIP": {"MOMENTUM": 0.5, "SINKHORN_ITERS": 7}},
    }
    ours, theirs = get_cfg(), get_cfg()
    add_pixelclip_config(ours)
    add_pixelclip_config(theirs)
    merge_config_file(ours, leaf)
    theirs.merge_from_file(leaf, allow_unsafe=False)
    assert ours.dump() == theirs.dump()
    for config in (REPO / "configs").rglob("*.yaml"):  # every shipped config reads the same way
        if "_BASE_" in config.read_text() or config.parent.name == "configs":
            a, b = get_cfg(), get_cfg()
            add_pixelclip_config(a)
            add_pixelclip_config(b)
            merge_config_file(a, config)
            b.merge_from_file(str(config), allow_unsafe=False)
            assert a.dump() == b.dump(), config


# ---------------------------------------------------------------------- names and formats
@pytest.mark.parametrize(
    "name",
    ["model.pkl", "MODEL.PKL", "model.pkl?matching_heuristics=True", "weights.Pickle", "m.pyth"],
)
def test_pickle_suffixes_are_refused_in_any_spelling(tmp_path, name, marker):
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"model": {}, "x": _Payload(marker)}))
    with pytest.raises(ValueError, match="pickle files are refused"):
        read_checkpoint(str(path))


def test_urls_and_query_strings_are_refused_before_any_download(tmp_path):
    with pytest.raises(ValueError, match="only local files"):
        read_checkpoint("https://example.invalid/model_final.pth")
    with pytest.raises(ValueError, match="only local files"):
        load_weights(torch.nn.Linear(1, 1), "detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    (tmp_path / "m.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="query suffixes"):
        read_checkpoint(f"{tmp_path / 'm.pth'}?matching_heuristics=True")
    with pytest.raises(ValueError, match="not a regular file"):
        read_checkpoint(tmp_path)


def test_formats_are_decided_by_content_not_name(tmp_path, marker):
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    bare = tmp_path / "no_suffix"
    bare.write_bytes(pickle.dumps({"model": {}, "x": _Payload(marker)}))
    with pytest.raises(ValueError, match="no_suffix.*bare pickle or a legacy"):
        read_checkpoint(bare)
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy.pth.*legacy"):
        read_checkpoint(legacy)
    disguised = tmp_path / "really_safetensors.pth"  # safetensors bytes under a .pth name
    atomic_save(tmp_path / "a.safetensors", sd)
    disguised.write_bytes((tmp_path / "a.safetensors").read_bytes())
    assert torch.equal(read_checkpoint(disguised)["model"]["w"], sd["w"])
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch zip archive nor a .safetensors file"):
        read_checkpoint(text)


# --------------------------------------------------------------------------- damaged files
def _tensor_data_offset(path: Path) -> int:
    """Offset of the first byte of the first tensor's data inside a torch.save zip."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


def _damaged(tmp_path: Path, how: str) -> Path:
    sd = {"w": torch.arange(1000.0)}
    if how.startswith("safetensors"):
        path = tmp_path / "m.safetensors"
        atomic_save(path, sd)
        raw = bytearray(path.read_bytes())
        if how == "safetensors-header":
            raw[8:12] = b"{@@@"  # header JSON no longer parses
        else:  # truncated
            raw = raw[: len(raw) // 2]
        path.write_bytes(bytes(raw))
        return path
    path = tmp_path / "m.pth"
    torch.save({"model": sd}, path)
    raw = bytearray(path.read_bytes())
    if how == "empty":
        raw = bytearray()
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "flipped":
        raw[_tensor_data_offset(path) + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("empty", "empty"),
        ("truncated", "damaged checkpoint"),
        ("flipped", r"checksum \(CRC-32\) mismatch"),
        ("safetensors-header", "damaged .safetensors"),
        ("safetensors-truncated", "damaged .safetensors|not a PyTorch zip"),
    ],
)
def test_damaged_files_are_errors_naming_the_file(tmp_path, how, match):
    path = _damaged(tmp_path, how)
    with pytest.raises(ValueError, match=match) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_flipped_bytes_load_silently_without_the_checksum_check(tmp_path):
    """Why the CRC check exists: torch.load itself returns the corrupted tensor."""
    path = _damaged(tmp_path, "flipped")
    loaded = torch.load(path, weights_only=True)["model"]["w"]
    assert not torch.equal(loaded, torch.arange(1000.0))


# ---------------------------------------------------------------------------- strict loads
def _broken(sd: dict, how: str) -> dict:
    sd = {k: v.clone() for k, v in sd.items()}
    key = "sem_seg_head.prompts.prompt_tokens"
    if how == "missing":
        del sd[key]
    elif how == "unexpected":
        sd["sem_seg_head.extra.weight"] = torch.zeros(1)
    elif how == "shape":
        sd[key] = sd[key][:1]
    elif how == "dtype":
        sd[key] = sd[key].long()
    elif how == "nan":
        sd[key][0, 0, 0] = float("nan")
    return sd


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("missing", r"1 missing keys \['sem_seg_head.prompts.prompt_tokens'\]"),
        ("unexpected", r"1 unexpected keys \['sem_seg_head.extra.weight'\]"),
        ("shape", r"prompt_tokens: file \(1, "),
        ("dtype", r"prompt_tokens: file dtype torch.int64 vs model torch.float32"),
        ("nan", r"1 tensors hold NaN or Inf: \['sem_seg_head.prompts.prompt_tokens'\]"),
    ],
)
def test_loading_is_strict_and_names_the_file_and_keys(tmp_path, tiny_model, how, match):
    path = tmp_path / "bad.pth"
    torch.save({"model": _broken(tiny_model.state_dict(), how)}, path)
    target = build_model(tiny_cfg()).eval()
    with pytest.raises(ValueError, match=match) as info:
        load_weights(target, str(path))
    assert "bad.pth" in str(info.value)


def test_partial_loads_are_opt_in_and_logged(tmp_path, tiny_model, caplog):
    path = tmp_path / "partial.pth"
    sd = _broken(tiny_model.state_dict(), "shape")
    sd["sem_seg_head.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, path)
    target = build_model(tiny_cfg(**{"MODEL.CLIP.PRETRAINED": ""})).eval()
    before = target.sem_seg_head.prompts.prompt_tokens.detach().clone()
    with caplog.at_level(logging.WARNING, logger="pixelclip"):
        load_weights(target, str(path), allow_partial=True)
    assert "PARTIAL LOAD" in caplog.text and "prompt_tokens" in caplog.text
    assert torch.equal(target.sem_seg_head.prompts.prompt_tokens, before)  # skipped, not loaded
    loaded = 0
    for key, value in target.state_dict().items():  # everything that matches is loaded
        if key in sd and sd[key].shape == value.shape:
            assert torch.equal(value, sd[key]), key
            loaded += 1
    assert loaded == len(sd) - 2


def test_the_reference_layout_is_converted_by_the_common_loader(tmp_path, tiny_model):
    """``load_weights`` (evaluate_all, Predictor, quickstart) reads the authors' layout."""
    ours = tiny_model.state_dict()
    path = tmp_path / "pixelclip_vit_base.pth"
    torch.save({"model": to_reference_layout(ours)}, path)
    target = build_model(tiny_cfg()).eval()
    torch.manual_seed(5)
    for p in target.parameters():
        p.data.normal_()
    load_weights(target, str(path))
    for key, value in target.state_dict().items():
        assert torch.equal(value, ours[key]), key


# --------------------------------------------------------------------------- resume, saving
def _two_checkpoints(tmp_path: Path, model) -> PixelCLIPCheckpointer:
    checkpointer = PixelCLIPCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    os.utime(tmp_path / "model_0000001.pth", (1, 1))  # older, whatever the file system's clock
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpointer.save("model_0000003")
    return checkpointer


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped"])
def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, damage, caplog):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    _two_checkpoints(tmp_path, model)
    first = read_checkpoint(tmp_path / "model_0000001.pth")["model"]
    tagged = tmp_path / "model_0000003.pth"
    if damage == "missing":
        tagged.unlink()
    elif damage == "truncated":
        tagged.write_bytes(tagged.read_bytes()[:200])
    else:
        raw = bytearray(tagged.read_bytes())
        raw[_tensor_data_offset(tagged) + 10] ^= 0x01
        tagged.write_bytes(bytes(raw))
    fresh = torch.nn.Linear(64, 64)
    with caplog.at_level(logging.WARNING, logger="pixelclip"):
        PixelCLIPCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert "resuming from" in caplog.text and "model_0000001.pth" in caplog.text
    assert torch.equal(fresh.weight, first["weight"])


def test_a_non_finite_model_is_never_saved_or_tagged(tmp_path):
    model = torch.nn.Linear(4, 4)
    checkpointer = PixelCLIPCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="not saving checkpoint 'model_0000002'.*weight"):
        checkpointer.save("model_0000002")
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_training_from_scratch_refuses_a_folder_with_a_run(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    fresh = argparse.Namespace(eval_only=False, resume=False, overwrite=False)
    check_output_dir(cfg, fresh)  # nothing there yet
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(ValueError, match="already holds a run.*model_final.pth.*--resume"):
        check_output_dir(cfg, fresh)
    for flag in ("eval_only", "resume", "overwrite"):
        check_output_dir(cfg, argparse.Namespace(**{**vars(fresh), flag: True}))
    with pytest.raises(ValueError, match="already holds a run"):  # a parser without the flag
        check_output_dir(cfg, argparse.Namespace(eval_only=False, resume=False))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_we_write_get_normal_permissions(tmp_path, umask_022):
    import numpy as np

    from pixelclip.data.prepare_utils import atomic_save_png
    from pixelclip.modeling.vocabulary import VocabularyEmbedder

    atomic_save(tmp_path / "a.pth", {"model": {"w": torch.zeros(1)}})
    atomic_save(tmp_path / "a.safetensors", {"w": torch.zeros(1)})
    write_atomically(tmp_path / "tag", lambda f: f.write(b"x"))
    atomic_save_png(np.zeros((4, 4), dtype=np.uint8), tmp_path / "label.png")
    PixelCLIPCheckpointer(torch.nn.Linear(1, 1), str(tmp_path / "run")).save("model_final")
    written = [tmp_path / n for n in ("a.pth", "a.safetensors", "tag", "label.png")]
    written += [tmp_path / "run" / "model_final.pth", tmp_path / "run" / "last_checkpoint"]
    cache = VocabularyEmbedder(tmp_path / "cache")
    cache._save("k", torch.zeros(1, 4), ["a"], ["{}"])
    written += list((tmp_path / "cache").iterdir())
    assert len(written) == 7
    for path in written:
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path


# -------------------------------------------------------------------------------------- SAM
def test_sam_model_type_is_read_from_the_file():
    for width, name in ((768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")):
        sd = {"image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 16, 16)}
        assert sam_model_type(sd) == name
    with pytest.raises(ValueError, match="width 96 is none of the released"):
        sam_model_type({"image_encoder.patch_embed.proj.weight": torch.zeros(96, 3, 16, 16)})
    with pytest.raises(ValueError, match="not a segment-anything SAM checkpoint"):
        sam_model_type({"w": torch.zeros(1)})


def test_crafted_files_through_the_onnx_export_and_the_web_demo(tmp_path, marker, capsys):
    """tools/export_onnx.py and demo/app.py read weights and configs through the same safe path:
    a planted pickle or a YAML with Python tags is refused before anything runs."""
    evil = _evil_pickle(tmp_path / "model_final.pth", marker)
    evil_yaml = _evil_yaml(tmp_path / "evil.yaml", marker)
    config = tmp_path / "config.yaml"
    config.write_text(tiny_cfg().dump())
    export = load_script("tools/export_onnx.py", "safe_export_onnx")
    for argv in (
        ["graphs", "--config-file", str(config), "--weights", evil, "--output-dir", str(tmp_path)],
        ["text", "--config-file", str(config), "--weights", evil, "--vocabulary", "sky",
         "--output", str(tmp_path / "t.npy")],
        ["graphs", "--config-file", evil_yaml, "--weights", "", "--output-dir", str(tmp_path)],
    ):  # fmt: skip
        assert export.main(argv) == 2
        assert "refused" in capsys.readouterr().err
    app = load_script("demo/app.py", "safe_app")
    for argv in ([evil], ["--config-file", str(config), "--weights", evil],
                 ["--config-file", evil_yaml]):  # fmt: skip
        assert app.main(argv) == 2
        assert "refused" in capsys.readouterr().err
    assert not marker.exists()
