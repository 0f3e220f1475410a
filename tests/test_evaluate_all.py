"""tools/evaluate_all.py (pixelclip.evaluation.evaluate_all) and pixelclip.evaluation: the CLI end
to end on a generated benchmark with a tiny CLIP (mIoU against a confusion matrix computed here
from the model's own predictions and the label PNGs), both protocols, checkpoints, --append,
--max-images, missing benchmarks, the class-subset mIoU, the markdown/JSON tables and the
command-line interface."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import load_script, make_tiny_clip
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image
from test_meta_arch import tiny_cfg

from pixelclip.config import add_pixelclip_config
from pixelclip.data.benchmarks import register_all_benchmarks, register_sem_seg_dataset
from pixelclip.evaluation import evaluate_all as cli
from pixelclip.evaluation import tables
from pixelclip.evaluation.evaluate import class_group_mious, evaluation_resize, subset_miou

DATASET = "evalall_tiny_val_sem_seg"
CLASSES = ["cat", "sky, heaven", "road"]
# (height, width) of the three generated images, named a, b, c.
SIZES = [(48, 64), (64, 48), (64, 64)]
WHOLE_SIZE = (96, 120)  # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST of the test config
SLIDE_SIZE = (80, 2048)  # --test-size 80 with the slide protocol's cap


def _write_pair(folder, stem, height, width, rng, image_dir="images", label_dir="labels"):
    """An image of three coloured regions with noise, and its label PNG (class per region, a strip
    of 255 = ignore)."""
    labels = np.zeros((height, width), np.uint8)
    labels[:, width // 3 :] = 1
    labels[height // 2 :, width // 2 :] = 2
    labels[:4] = 255
    palette = np.array([[200, 40, 40], [60, 120, 230], [90, 90, 90]], np.int32)
    image = palette[np.minimum(labels, 2)] + rng.integers(-30, 30, (height, width, 3))
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    (folder / label_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        folder / image_dir / f"{stem}.png"
    )
    Image.fromarray(labels).save(folder / label_dir / f"{stem}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_benchmark")
    rng = np.random.default_rng(0)
    for stem, (h, w) in zip("abc", SIZES):
        _write_pair(root, stem, h, w, rng)
    register_sem_seg_dataset(
        DATASET, root / "images", root / "labels", CLASSES, image_ext=".png", replace=True
    )
    yield root
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The config YAML (tiny CLIP read from a weight file: the "pretrained" baseline) and a
    PixelCLIP checkpoint whose image and text towers come from a differently seeded CLIP."""
    root = tmp_path_factory.mktemp("evaluate_all_files")
    clip_file = root / "tiny_clip.pt"
    # Seeds whose random CLIPs predict several classes on these images (seeds 0 and 1 predict
    # one class everywhere, which would make the mIoU comparison weak).
    torch.save(make_tiny_clip("tiny-vit", seed=2).state_dict(), clip_file)
    cfg = tiny_cfg(
        **{
            "MODEL.CLIP.PRETRAINED": str(clip_file),
            "DATALOADER.NUM_WORKERS": 0,
            # Small "whole" test sizes keep the test fast; the cap binds for the 48 x 64 image.
            "INPUT.MIN_SIZE_TEST": WHOLE_SIZE[0],
            "INPUT.MAX_SIZE_TEST": WHOLE_SIZE[1],
        }
    )
    config = root / "tiny.yaml"
    config.write_text(cfg.dump())

    other_clip = root / "other_clip.pt"
    torch.save(make_tiny_clip("tiny-vit", seed=3).state_dict(), other_clip)
    trained = build_model(tiny_cfg(**{"MODEL.CLIP.PRETRAINED": str(other_clip)}))
    checkpoint = root / "run1" / "model_final.pth"
    checkpoint.parent.mkdir()
    torch.save({"model": trained.state_dict()}, checkpoint)
    return {"config": config, "checkpoint": checkpoint}


_PREDICTIONS: dict = {}  # (protocol, size, checkpoint) -> {stem: argmax map}, shared by tests


def _predictions(config, protocol, size, checkpoint, root):
    """The model's argmax maps at the original image sizes, each image resized first as
    detectron2's test mapper does (ResizeShortestEdge)."""
    key = (protocol, tuple(size), str(checkpoint))
    if key not in _PREDICTIONS:
        cfg = get_cfg()
        add_pixelclip_config(cfg)
        cfg.merge_from_file(str(config))
        cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = protocol
        model = build_model(cfg).eval()
        if checkpoint is not None:
            model.load_state_dict(torch.load(checkpoint)["model"])
        model.set_vocabulary(CLASSES)
        maps = {}
        for stem in "abc":
            image = np.asarray(Image.open(root / "images" / f"{stem}.png").convert("RGB"))
            height, width = image.shape[:2]
            resized = T.ResizeShortestEdge(*size).get_transform(image).apply_image(image)
            x = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            with torch.no_grad():
                scores = model([{"image": x, "height": height, "width": width}])[0]["sem_seg"]
            maps[stem] = scores.argmax(0).numpy()
        _PREDICTIONS[key] = maps
    return _PREDICTIONS[key]


def reference_ious(config, protocol, size, stems="abc", checkpoint=None, root=None):
    """Per-class IoU (%) and mIoU computed here from the model's predictions: a confusion matrix
    over the pixels whose label is not 255, IoU of the classes present in the labels."""
    maps = _predictions(config, protocol, size, checkpoint, root)
    n = len(CLASSES)
    confusion = np.zeros((n, n), np.int64)  # [label, prediction]
    for stem in stems:
        prediction = maps[stem]
        labels = np.asarray(Image.open(root / "labels" / f"{stem}.png"))
        for y in range(labels.shape[0]):
            for x in range(labels.shape[1]):
                if labels[y, x] != 255:
                    confusion[labels[y, x], prediction[y, x]] += 1
    ious = {}
    for c, name in enumerate(CLASSES):
        if confusion[c].sum() > 0:
            union = confusion[c].sum() + confusion[:, c].sum() - confusion[c, c]
            ious[name] = 100.0 * confusion[c, c] / union
    return ious, sum(ious.values()) / len(ious)


def _run(argv):
    return cli.main([str(a) for a in argv])


@pytest.mark.parametrize("protocol", ["whole", "slide"])
def test_baseline_matches_an_independent_miou(protocol, dataset, files, tmp_path):
    out = tmp_path / "out"
    argv = ["--config-file", files["config"], "--baseline", "--benchmarks", DATASET]
    argv += ["--protocol", protocol, "--output", out]
    if protocol == "slide":  # the default 336 is checked in test_evaluation_resize_...
        argv += ["--test-size", SLIDE_SIZE[0]]
    assert _run(argv) == 0

    run = tables.load_runs(out / "results.json")[0]
    entry = run["benchmarks"][DATASET]
    size = WHOLE_SIZE if protocol == "whole" else SLIDE_SIZE
    assert entry["test_size"] == list(size)
    ious, miou = reference_ious(files["config"], protocol, size, root=dataset)
    predictions = _predictions(files["config"], protocol, size, None, dataset)
    assert len(np.unique(np.concatenate([p.ravel() for p in predictions.values()]))) >= 2
    assert 0 < miou < 100
    assert entry["metrics"]["mIoU"] == pytest.approx(miou, abs=1e-9)
    for name, value in ious.items():
        assert entry["metrics"][f"IoU-{name}"] == pytest.approx(value, abs=1e-9)
    assert subset_miou(entry["metrics"], CLASSES) == pytest.approx(miou, abs=1e-9)
    assert {"fwIoU", "pACC", "mACC"} <= set(entry["metrics"])
    assert entry["status"] == "ok" and entry["num_images"] == entry["num_images_total"] == 3
    assert not entry["subset"]
    assert run["model"] == "CLIP tiny-vit (baseline)" and run["weights"] == ""
    assert run["protocol"] == protocol and f"PROTOCOL: {protocol}" in run["config"]
    assert "--baseline" in run["command"] and run["date"] and run["max_images"] is None

    markdown = (out / "results.md").read_text()
    header = f"| model | {DATASET} |"
    assert header in markdown
    assert f"| CLIP tiny-vit (baseline) | {miou:.1f} |" in markdown
    assert "†" not in markdown


def test_checkpoint_append_and_subset(dataset, files, tmp_path):
    out = tmp_path / "out"
    base = ["--config-file", files["config"], "--benchmarks", DATASET, "--output", out]
    assert _run([*base, "--baseline", "--max-images", "2"]) == 0
    assert _run([*base, "--weights", files["checkpoint"], "--append"]) == 0

    baseline, trained = tables.load_runs(out / "results.json")
    size = WHOLE_SIZE
    _, subset_miou_value = reference_ious(files["config"], "whole", size, "ab", root=dataset)
    entry = baseline["benchmarks"][DATASET]
    assert entry["subset"] and entry["num_images"] == 2 and entry["num_images_total"] == 3
    assert entry["metrics"]["mIoU"] == pytest.approx(subset_miou_value, abs=1e-9)
    assert baseline["max_images"] == 2

    _, trained_miou = reference_ious(
        files["config"], "whole", size, checkpoint=files["checkpoint"], root=dataset
    )
    assert trained["model"] == "PixelCLIP run1/model_final"
    assert trained["benchmarks"][DATASET]["metrics"]["mIoU"] == pytest.approx(
        trained_miou, abs=1e-9
    )
    _, baseline_miou = reference_ious(files["config"], "whole", size, root=dataset)
    assert trained_miou != pytest.approx(baseline_miou)  # the checkpoint changes predictions

    markdown = (out / "results.md").read_text()
    assert f"| CLIP tiny-vit (baseline) | {subset_miou_value:.1f}† |" in markdown
    assert f"| PixelCLIP run1/model_final | {trained_miou:.1f} |" in markdown
    assert "SUBSET ONLY" in markdown and "first 2 of 3 images" in markdown


def test_missing_benchmark_is_reported_and_the_others_still_run(
    dataset, files, tmp_path, monkeypatch, capsys
):
    register_all_benchmarks()  # lazily reads $DETECTRON2_DATASETS when the data is requested
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_data"))
    out = tmp_path / "out"
    argv = ["--config-file", files["config"], "--baseline", "--max-images", "1"]
    argv += ["--benchmarks", "voc-20", DATASET, "--output", out]
    assert _run(argv) == 1
    err = capsys.readouterr().err
    expected_folder = tmp_path / "no_data" / "VOCdevkit/VOC2012/annotations_detectron2/voc20_val"
    assert "voc_20_val_sem_seg" in err and str(expected_folder) in err
    assert "prepare_voc.py" in err

    run = tables.load_runs(out / "results.json")[0]
    assert run["benchmarks"]["voc_20_val_sem_seg"]["status"] == "missing"
    assert run["benchmarks"][DATASET]["status"] == "ok"
    markdown = (out / "results.md").read_text()
    assert "| model | VOC-20 | evalall_tiny_val_sem_seg |" in markdown
    assert "| CLIP tiny-vit (baseline) | missing | " in markdown

    # Nothing to evaluate: no model is built, the table still says why.
    argv = ["--config-file", files["config"], "--baseline", "--benchmarks", "voc-20"]
    assert _run([*argv, "--output", out, "--allow-missing"]) == 0
    assert "| CLIP tiny-vit (baseline) | missing |" in (out / "results.md").read_text()


def test_subset_miou_by_hand():
    metrics = {"mIoU": 50.0, "IoU-car": 50.0, "IoU-sky": math.nan, "IoU-road": 20.0}
    metrics["IoU-person"] = 80.0
    assert subset_miou(metrics, ["car", "person"]) == pytest.approx(65.0)  # things
    assert subset_miou(metrics, ["sky", "road"]) == pytest.approx(20.0)  # stuff, sky not in GT
    assert math.isnan(subset_miou(metrics, ["sky"]))
    assert subset_miou({**metrics, "IoU-sky": None}, ["car", "sky", "road"]) == pytest.approx(35.0)
    groups = class_group_mious(metrics, {"things": ["car", "person"], "stuff": ["road"]})
    assert groups == pytest.approx({"things": 65.0, "stuff": 20.0})
    with pytest.raises(KeyError, match="IoU-tree.*car"):
        subset_miou(metrics, ["car", "tree"])
    with pytest.raises(ValueError, match="empty"):
        subset_miou(metrics, [])


def test_evaluation_resize_per_protocol_and_benchmark():
    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TEST": 512, "INPUT.MAX_SIZE_TEST": 1024})
    assert evaluation_resize(cfg, "ade20k_150_val_sem_seg") == (512, 1024)
    cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = "slide"
    assert evaluation_resize(cfg, "ade20k_150_val_sem_seg") == (336, 2048)
    assert evaluation_resize(cfg, "cityscapes_19_val_sem_seg") == (448, 2048)
    assert evaluation_resize(cfg, "cityscapes_19_val_sem_seg", test_size=0) == (0, 2048)
    cfg.MODEL.PIXELCLIP.TEST.PROTOCOL = "tiles"
    with pytest.raises(ValueError, match="PROTOCOL 'tiles'"):
        evaluation_resize(cfg, "ade20k_150_val_sem_seg")


def _entry(miou, *, subset=False, n=10, total=10, status="ok", iou=None):
    metrics = {"mIoU": miou, **(iou or {})} if status == "ok" else {}
    return {
        "status": status,
        "error": "" if status == "ok" else "no folder",
        "metrics": metrics,
        "num_images": n,
        "num_images_total": total,
        "subset": subset,
        "test_size": [640, 2560],
    }


def test_tables_merge_markdown_and_json(tmp_path):
    ade, voc = "ade20k_150_val_sem_seg", "voc_20_val_sem_seg"
    first = tables.make_run(
        "CLIP ViT-B/16 (baseline)",
        {voc: _entry(73.94), ade: _entry(13.25, subset=True, n=5, total=2000)},
        protocol="whole",
        date="2024-01-01T00:00:00+00:00",
    )
    later = tables.make_run(
        "CLIP ViT-B/16 (baseline)",
        {ade: _entry(13.16, iou={"IoU-wall": 30.0, "IoU-sky": math.nan, "IoU-car": 10.0})},
        protocol="whole",
    )
    other = tables.make_run("PixelCLIP a/b", {ade: _entry(0, status="missing")}, protocol="whole")
    runs = tables.merge([first], [first, later], [other])
    assert runs == [first, later, other]  # the duplicate is dropped

    columns = [
        tables.Column(ade),
        tables.Column(ade, "ADE stuff", ("wall", "sky")),
        tables.Column(voc),
    ]
    markdown = tables.to_markdown(runs, columns)
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert rows == [
        "| model | ADE-150 | ADE stuff | VOC-20 |",
        "|---|---|---|---|",
        "| CLIP ViT-B/16 (baseline) | 13.2 | 30.0 | 73.9 |",  # the later full ADE run wins
        "| PixelCLIP a/b | missing | missing | - |",
    ]
    assert "SUBSET" not in markdown and "missing: " in markdown

    # Default columns in the paper's order; a subset cell is marked; mixed protocols get labels.
    subset_only = tables.make_run(
        "CLIP ViT-B/16 (baseline)",
        {voc: _entry(70.0), ade: _entry(12.0, subset=True, n=5, total=2000)},
        protocol="slide",
    )
    markdown = tables.to_markdown([first, subset_only])
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert rows[0] == "| model | ADE-150 | VOC-20 |"
    assert rows[2] == "| CLIP ViT-B/16 (baseline) [whole] | 13.2† | 73.9 |"
    assert rows[3] == "| CLIP ViT-B/16 (baseline) [slide] | 12.0† | 70.0 |"
    assert "first 5 of 2000 images" in markdown

    json_path, md_path = tables.write_results(runs, tmp_path)
    text = json_path.read_text()
    assert (
        "NaN" not in text
        and json.loads(text)["runs"][1]["benchmarks"][ade]["metrics"]["IoU-sky"] is None
    )
    loaded = tables.load_runs(json_path)
    assert tables.to_markdown(loaded, columns) == tables.to_markdown(runs, columns)
    assert md_path.read_text() == tables.to_markdown(runs)


def test_model_labels_and_aliases():
    assert tables.model_label("ViT-B-16") == "CLIP ViT-B/16 (baseline)"
    assert tables.model_label("convnext_base_w_320") == "OpenCLIP ConvNeXt-B (baseline)"
    assert tables.model_label("ViT-B-16", "out/vitb16_sa1b/model_final.pth") == (
        "PixelCLIP vitb16_sa1b/model_final"
    )
    expected = {
        "coco-stuff": "coco_stuff_171_val_sem_seg",
        "ade-150": "ade20k_150_val_sem_seg",
        "context-59": "pascal_context_59_val_sem_seg",
        "cityscapes": "cityscapes_19_val_sem_seg",
        "voc-20": "voc_20_val_sem_seg",
        "voc-21": "voc_21_val_sem_seg",
        "context-60": "pascal_context_60_val_sem_seg",
    }
    assert {a: tables.resolve_benchmark(a.upper()) for a in expected} == expected
    assert tables.PAPER_BENCHMARKS == tuple(list(expected.values())[:5])


def test_help_is_complete(capsys):
    """Through the script in tools/ (a thin wrapper of pixelclip.evaluation.evaluate_all)."""
    tool = load_script("tools/evaluate_all.py", "evaluate_all_tool")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in cli.build_parser()._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help and (action.help.split("(")[0].strip()[:20] in " ".join(text.split()))
    for alias, name in tables.BENCHMARK_ALIASES.items():
        assert alias in text and name in text
    assert "336" in text and "448" in text and "--allow-missing" in text


def test_bad_input_gets_clear_errors(files, tmp_path, capsys):
    base = ["--config-file", files["config"], "--output", tmp_path]
    cases = [
        ([*base, "--baseline", "--benchmarks", "ade-151"], "unknown benchmark 'ade-151'"),
        ([*base, "--weights", tmp_path / "nope.pth"], "no checkpoint file"),
        ([*base, "--baseline", "--max-images", "0"], "--max-images must be >= 1"),
        (["--config-file", tmp_path / "none.yaml", "--baseline"], "no file"),
        ([*base], "give at least one model: --weights FILE, --baseline or --dense-variants"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _run(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"runs": []}')
    with pytest.raises(SystemExit):
        _run([*base, "--baseline", "--append"])
    assert "not a results file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="results.json: not a results file"):
        tables.load_runs(tmp_path / "results.json")
