"""Evaluation presets (pixelclip.evaluation.presets), the training-free readout around the model
(pixelclip.inference.readout) and what a preset run records: resolution key by key, a
hand-computed background-threshold case through ``evaluate`` and detectron2's evaluator, the
results.json fields, the table's average column, and a tiny ``evaluate_all --preset
training-free`` end to end on generated benchmarks in the layout of ``BenchmarkSpec``."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from test_evaluate_all import files  # noqa: F401  (fixture: tiny config + checkpoint)

from pixelclip.config import add_pixelclip_config
from pixelclip.data.benchmarks import BENCHMARKS, register_all_benchmarks, register_sem_seg_dataset
from pixelclip.evaluation import evaluate_all as cli
from pixelclip.evaluation import tables
from pixelclip.evaluation.evaluate import evaluate
from pixelclip.evaluation.presets import (
    PRESETS,
    BenchmarkProtocol,
    Preset,
    apply_preset,
    benchmark_setup,
    explicit_keys,
    resolve_benchmark_names,
)
from pixelclip.inference.readout import ReadoutSettings

TF = PRESETS["training-free"]
# NACLIP's configs/cfg_*.py, typed from the files (not from presets.py): shortest edge, threshold.
NACLIP = {
    "voc_21_val_sem_seg": (336, 0.1),
    "pascal_context_60_val_sem_seg": (336, 0.1),
    "coco_object_81_val_sem_seg": (336, 0.1),
    "voc_20_val_sem_seg": (336, 0.0),
    "cityscapes_19_val_sem_seg": (560, 0.0),
    "pascal_context_59_val_sem_seg": (336, 0.0),
    "ade20k_150_val_sem_seg": (336, 0.0),
    "coco_stuff_171_val_sem_seg": (448, 0.0),
}


def _cfg():
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


# ----------------------------------------------------------------------------- resolution
def test_training_free_preset_sets_naclips_values_and_explicit_keys_win():
    register_all_benchmarks()
    cfg = _cfg()
    changed = apply_preset(cfg, TF, explicit={"MODEL.PIXELCLIP.TEST.SLIDE_STRIDE"})
    test = cfg.MODEL.PIXELCLIP.TEST
    assert "MODEL.PIXELCLIP.TEST.SLIDE_STRIDE" not in changed and test.SLIDE_STRIDE == 112
    assert (test.PROTOCOL, test.SLIDE_CROP, test.PROMPT_ENSEMBLE) == ("slide", 224, "imagenet")
    assert (test.READOUT, test.LOGIT_SCALE, test.PAMR_STEPS) == ("training_free", 40.0, 0)
    assert list(test.PAMR_DILATIONS) == [8, 16]
    # An explicit key keeps the value the command line gives (here set before the preset).
    cfg = _cfg()
    cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE = "single"
    apply_preset(cfg, TF, explicit={"MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE"})
    assert cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE == "single"
    assert cfg.MODEL.PIXELCLIP.TEST.READOUT == "training_free"

    cfg = _cfg()
    apply_preset(cfg, TF)
    assert resolve_benchmark_names(None, TF) == list(NACLIP)
    for name, (short, threshold) in NACLIP.items():
        setup = benchmark_setup(cfg, TF, name)
        assert setup.test_size == (short, 2048) and setup.prob_threshold == threshold
        assert setup.vocabulary.endswith(f"training_free/{name.rsplit('_val', 1)[0]}.json")
        assert len(setup.class_names) == len(MetadataCatalog.get(name).stuff_classes)
        assert setup.background == (0 if threshold else None)
    voc = benchmark_setup(cfg, TF, "voc_21_val_sem_seg")
    assert voc.class_names[0].split(", ")[:3] == ["sky", "wall", "tree"]
    assert len(voc.class_names[0].split(", ")) == 26

    # Key by key: each explicit value replaces the preset's for every benchmark, the rest stays.
    cfg.MODEL.PIXELCLIP.TEST.PROB_THRESHOLD = 0.3
    setup = benchmark_setup(cfg, TF, "voc_21_val_sem_seg", {"MODEL.PIXELCLIP.TEST.PROB_THRESHOLD"})
    assert setup.prob_threshold == 0.3 and setup.test_size == (336, 2048)
    setup = benchmark_setup(cfg, TF, "cityscapes_19_val_sem_seg", test_size=400)
    assert setup.test_size == (400, 2048) and setup.prob_threshold == 0.0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 500, 900
    setup = benchmark_setup(cfg, TF, "coco_stuff_171_val_sem_seg", {"INPUT.MIN_SIZE_TEST"})
    assert setup.test_size == (500, 900)
    cfg.MODEL.PIXELCLIP.TEST.VOCABULARY = ["a", "b"]
    setup = benchmark_setup(cfg, TF, "voc_20_val_sem_seg")
    assert setup.class_names is None and "VOCABULARY" in setup.vocabulary


def test_paper_preset_changes_nothing_and_large_adds_two_benchmarks():
    register_all_benchmarks()
    cfg, reference = _cfg(), _cfg()
    assert apply_preset(cfg, PRESETS["paper"]) == [] and cfg.dump() == reference.dump()
    paper = PRESETS["paper"]
    assert resolve_benchmark_names([], paper) == list(tables.PAPER_BENCHMARKS)
    large = resolve_benchmark_names(["large"], TF)
    assert large == [*NACLIP, "pascal_context_459_val_sem_seg", "ade20k_847_val_sem_seg"]
    setup = benchmark_setup(cfg, paper, "voc_21_val_sem_seg")
    assert setup.test_size == (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert setup.prob_threshold == 0.0
    assert setup.vocabulary.startswith("pixelclip/data/class_names/voc_21.json")
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        explicit_keys(["MODEL.DEVICE"])
    with pytest.raises(ValueError, match="PROB_THRESHOLD 0.2: a probability threshold needs"):
        ReadoutSettings(readout="cosine", prob_threshold=0.2)
    with pytest.raises(ValueError, match="PAMR_STEPS -1"):
        ReadoutSettings(pamr_steps=-1)


def test_evaluate_all_config_resolution_order(files):  # noqa: F811
    """File < preset < KEY VALUE < the tool's options."""
    args = cli.build_parser().parse_args(
        ["--config-file", str(files["config"]), "--baseline", "--preset", "training-free"]
        + ["--pamr", "on", "MODEL.PIXELCLIP.TEST.SLIDE_CROP", "32"]
        + ["MODEL.PIXELCLIP.TEST.PAMR_STEPS", "3"]
    )
    cfg = cli.setup_cfg(args)
    test = cfg.MODEL.PIXELCLIP.TEST
    assert test.SLIDE_CROP == 32 and test.SLIDE_STRIDE == 112 and test.PAMR_STEPS == 10
    assert test.READOUT == "training_free" and test.PROMPT_ENSEMBLE == "imagenet"
    assert cli.explicit_config_keys(args) == {
        "MODEL.PIXELCLIP.TEST.SLIDE_CROP",
        "MODEL.PIXELCLIP.TEST.PAMR_STEPS",
    }


# ---------------------------------------------------------- background threshold, by hand
_CLASSES = ["background", "cat", "dog, puppy"]
# Cosine offsets of each query at the four pixels (row-major 2 x 2), over a common 0.2.
_OFFSETS = {
    "background": [0.0, 0.0, 0.0, 0.02],
    "cat": [0.0, 0.1, 0.0, 0.0],
    "dog": [0.0, 0.0, 0.05, 0.0],
    "puppy": [0.0, 0.0, 0.05, 0.0],
}
_LABELS = np.array([[0, 1], [2, 0]], np.uint8)


class _FixedScores(torch.nn.Module):
    """Stands for PixelCLIP: cosine maps looked up by query name (ignores the image)."""

    def __init__(self):
        super().__init__()
        self.vocabulary = None
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    def set_vocabulary(self, names):
        self.vocabulary = list(names)

    def forward(self, batched_inputs):
        maps = torch.tensor([_OFFSETS[q] for q in self.vocabulary], dtype=torch.float32) + 0.2
        return [{"sem_seg": maps.view(-1, 2, 2)} for _ in batched_inputs]


def _hand_probabilities():
    """Class probabilities per pixel from exp(), in float64: softmax of 40 x cosine over the
    four queries, a class its best name."""
    out = []
    for p in range(4):
        e = {q: math.exp(40 * (0.2 + v[p])) for q, v in _OFFSETS.items()}
        total = sum(e.values())
        out.append([e["background"] / total, e["cat"] / total, max(e["dog"], e["puppy"]) / total])
    return out


@pytest.fixture
def hand_dataset(tmp_path):
    name = "presets_hand_val_sem_seg"
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.full((2, 2, 3), 128, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(_LABELS).save(tmp_path / "labels" / "a.png")
    register_sem_seg_dataset(
        name, tmp_path / "images", tmp_path / "labels", _CLASSES, ".png", replace=True
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("threshold", [0.3, 0.45])
def test_background_threshold_by_hand_through_the_evaluator(hand_dataset, threshold, tmp_path):
    probs = _hand_probabilities()
    # The case is built so that 0.3 < the dog pixel's probability < 0.45 < the cat pixel's.
    assert 0.3 < probs[2][2] < 0.45 < probs[1][1] and max(probs[0]) < 0.3
    predicted = []
    for p in probs:
        best = max(range(3), key=lambda c: p[c])
        predicted.append(0 if max(p) < threshold else best)
    ious = []
    for c in range(3):
        labels, preds = _LABELS.ravel().tolist(), predicted
        tp = sum(1 for y, q in zip(labels, preds) if y == c and q == c)
        union = sum(1 for y, q in zip(labels, preds) if y == c or q == c)
        ious.append(100.0 * tp / union)
    expected = sum(ious) / 3

    preset = Preset(
        "hand",
        "hand-computed case",
        (hand_dataset,),
        per_benchmark={hand_dataset: BenchmarkProtocol((2, 2), threshold, "")},
    )
    cfg = _cfg()
    cfg.MODEL.PIXELCLIP.TEST.READOUT = "training_free"
    results = evaluate(cfg, _FixedScores(), [hand_dataset], preset=preset, output_dir=tmp_path)
    entry = results[hand_dataset]
    assert entry["prob_threshold"] == threshold and entry["background"] == 0
    assert entry["num_queries"] == 4 and entry["readout"] == "training_free"
    assert entry["mIoU"] == pytest.approx(expected, abs=1e-9)
    for c, name in enumerate(_CLASSES):
        assert entry["per_class_iou"][name] == pytest.approx(ious[c], abs=1e-9)


# ------------------------------------------------------------------------ markdown table
def _entry(miou, subset=False):
    return {
        "status": "ok",
        "metrics": {"mIoU": miou},
        "subset": subset,
        "num_images": 2,
        "num_images_total": 9,
        "pamr": None,
    }


def test_table_average_column_for_the_training_free_preset():
    values = [64.0, 35.0, 36.0, 83.0, 38.0, 38.5, 19.0, 25.5]
    full = tables.make_run(
        "A",
        {n: _entry(v) for n, v in zip(NACLIP, values)},
        protocol="slide",
        preset="training-free",
    )
    partial = tables.make_run(
        "B", {n: _entry(10.0, subset=True) for n in list(NACLIP)[:7]}, protocol="slide"
    )
    partial["preset"] = "training-free"
    text = tables.to_markdown([full, partial])
    assert "| Avg (8) |" in text.splitlines()[2]
    row_a = next(line for line in text.splitlines() if line.startswith("| A |"))
    assert row_a.endswith(f"| {sum(values) / 8:.1f} |")
    row_b = next(line for line in text.splitlines() if line.startswith("| B |"))
    assert row_b.endswith("| - |") and "10.0†" in row_b
    assert "training-free (NACLIP's configs)" in text and "SUBSET ONLY" in text
    paper = tables.make_run("C", {"voc_20_val_sem_seg": _entry(80.0)}, protocol="whole")
    assert "Avg (" not in tables.to_markdown([paper])
    assert "Preset paper:" in tables.to_markdown([paper])


# ------------------------------------------------------------------- end to end, tiny
def _write_benchmark(root, spec, rng, count=3):
    """``count`` tiny image/label pairs where ``BenchmarkSpec`` expects them."""
    classes = len(MetadataCatalog.get(spec.name).stuff_classes)
    for i in range(count):
        height, width = 20 + 4 * i, 28
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, min(classes, 4), (height, width)).astype(np.uint8)
        labels[:2] = 255
        stem = f"city/img{i}" if "cityscapes" in spec.name else f"img{i}"
        pairs = ((spec.image_dir, spec.image_ext, image), (spec.gt_dir, spec.gt_ext, labels))
        for folder, ext, array in pairs:
            path = root / folder / f"{stem}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, format="PNG" if ext.endswith("png") else "JPEG")


def test_evaluate_all_training_free_end_to_end(files, tmp_path, monkeypatch):  # noqa: F811
    root = tmp_path / "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_all_benchmarks()
    specs = {s.name: s for s in BENCHMARKS}
    rng = np.random.default_rng(0)
    for name in NACLIP:
        _write_benchmark(root, specs[name], rng)
    out = tmp_path / "out"
    argv = ["--config-file", files["config"], "--baseline", "--dense-variants", "naclip"]
    argv += ["--preset", "training-free", "--max-images", "2", "--output", out]
    # Kept fast (the windows' score maps of up to 171 queries dominate the cost): the shortest
    # edge 224 for every benchmark instead of the preset's 336 / 448 / 560 (those are checked by
    # test_training_free_preset_sets_naclips_values_and_explicit_keys_win), and one template
    # instead of 80. Both are overrides, and recorded as such.
    argv += ["--test-size", 224, "MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE", "single"]
    try:
        assert cli.main([str(a) for a in argv]) == 0
    finally:
        register_all_benchmarks()  # the registration reads the root of the moment
    runs = tables.load_runs(out / "results.json")
    assert [r["model"] for r in runs] == [
        "CLIP tiny-vit (baseline)",
        "CLIP tiny-vit + naclip readout",
    ]
    assert [r["dense_variant"] for r in runs] == ["reference", "naclip"]
    for run in runs:
        assert run["preset"] == "training-free" and run["protocol"] == "slide"
        assert list(run["benchmarks"]) == list(NACLIP)
        for name, (_, threshold) in NACLIP.items():
            entry = run["benchmarks"][name]
            assert entry["status"] == "ok" and entry["preset"] == "training-free"
            assert entry["test_size"] == [224, 2048]
            assert entry["window"] == {"protocol": "slide", "crop": 224, "stride": 112}
            assert entry["prob_threshold"] == threshold and entry["pamr"] is None
            assert entry["readout"] == "training_free" and entry["logit_scale"] == 40.0
            assert entry["prompt_ensemble"] == "single"
            assert entry["vocabulary"].startswith("pixelclip/data/class_names/training_free/")
            assert entry["subset"] and entry["num_images"] == 2 and entry["num_images_total"] == 3
            assert entry["mIoU"] == entry["metrics"]["mIoU"]
            classes = MetadataCatalog.get(name).stuff_classes
            assert set(entry["per_class_iou"]) == set(classes)
            assert entry["images_per_second"] > 0 and entry["peak_memory_mb"] > 0
            assert entry["peak_memory_kind"] == "cpu_peak_rss_of_process"
        voc = run["benchmarks"]["voc_21_val_sem_seg"]
        assert voc["num_queries"] == 26 + 18 + 7 + 5  # background, 18 single names, person, tv
    data = json.loads((out / "results.json").read_text())
    assert data["format"] == "pixelclip-evaluation"
    markdown = (out / "results.md").read_text()
    assert "| Avg (8) |" in markdown and "SUBSET ONLY" in markdown
    assert "Preset training-free" in markdown


def test_train_net_eval_only_preset_flag():
    from pixelclip.engine import build_parser
    from pixelclip.engine.trainer import setup

    args = build_parser().parse_args(["--config-file", "x.yaml", "--preset", "training-free"])
    assert args.preset == "training-free" and not args.eval_only
    with pytest.raises(ValueError, match="use it with --eval-only"):
        setup(argparse.Namespace(**vars(args)))


# ------------------------------------------------------------------ windows, PAMR, train_net
class _RecordingBackbone(torch.nn.Module):
    """Stands for the image tower: records the windows it is given, returns zero features."""

    def __init__(self, dim):
        super().__init__()
        self.dim, self.windows = dim, []

    def forward(self, windows):
        self.windows.append(windows.clone())
        n, _, h, w = windows.shape
        return {"clip": torch.zeros(n, self.dim, h // 16, w // 16)}


def _naclip_boxes(height, width, crop, stride):
    """Window corners by NACLIP's rule (naclip.py forward_slide), typed from its loop."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * stride + crop, height), min(j * stride + crop, width)
            boxes.append((max(y2 - crop, 0), max(x2 - crop, 0)))
    return boxes


@pytest.mark.parametrize("size", [(40, 56), (33, 97), (32, 32), (64, 50)])
def test_slide_windows_follow_naclips_rule(size):
    from detectron2.modeling import build_model
    from test_meta_arch import tiny_cfg

    model = build_model(tiny_cfg(**{"MODEL.PIXELCLIP.TEST.PROTOCOL": "slide"})).eval()
    crop, stride = model.slide_crop, model.slide_stride  # 32, 16
    model.set_vocabulary(["red", "green"])
    dim = model.sem_seg_head.class_embeddings(["red"]).shape[-1]
    model.backbone = _RecordingBackbone(dim)
    height, width = size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    model([{"image": image, "height": height, "width": width}])
    windows = torch.cat(model.backbone.windows)
    normalised = model._normalize(image)
    expected = _naclip_boxes(height, width, crop, stride)
    assert windows.shape[0] == len(expected)
    for window, (y, x) in zip(windows, expected):
        assert torch.equal(window, normalised[:, y : y + crop, x : x + crop]), (y, x)


def test_pamr_and_threshold_through_the_readout():
    """ReadoutModel with PAMR: the refined query maps, softmax x 40, best name, threshold, against
    a float64 computation of the same steps."""
    from conftest import assert_close_to_float64

    from pixelclip.inference.pamr import pamr
    from pixelclip.inference.readout import ReadoutModel

    g = torch.Generator().manual_seed(0)
    classes = ["background", "cat", "dog, puppy"]
    height, width = 12, 10
    cosines = {q: 0.2 + 0.05 * torch.randn(height, width, generator=g) for q in _OFFSETS}
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)

    class Scores(_FixedScores):
        def forward(self, batched_inputs):
            return [{"sem_seg": torch.stack([cosines[q] for q in self.vocabulary])}]

    settings = ReadoutSettings("training_free", 40.0, 0.5, pamr_steps=2, pamr_dilations=(1, 2))
    readout = ReadoutModel(Scores(), classes, settings, background=0)
    out = readout([{"image": image, "height": height, "width": width}])[0]["sem_seg"]

    def reference(dtype):
        maps = torch.stack([cosines[q] for q in ("background", "cat", "dog", "puppy")])
        refined = pamr(image.to(dtype)[None], maps.to(dtype)[None], 2, (1, 2))[0]
        probs = (40 * refined).softmax(dim=0)
        return torch.stack([probs[0], probs[1], torch.maximum(probs[2], probs[3])])

    expected64, expected32 = reference(torch.float64), reference(torch.float32)
    best = expected64.max(dim=0).values
    assert bool((best < 0.5).any()) and bool((best >= 0.5).any())
    assert float((best - 0.5).abs().min()) > 1e-4  # no pixel on the edge of the threshold
    expected64[0] = torch.where(best < 0.5, torch.ones_like(best), expected64[0])
    expected32[0] = torch.where(best < 0.5, torch.ones_like(best), expected32[0])
    assert_close_to_float64(out, expected64, expected32)
    assert settings.as_record()["pamr"] == {"steps": 2, "dilations": [1, 2]}


def test_train_net_eval_only_with_the_training_free_preset(files, tmp_path):  # noqa: F811
    from test_evaluate_all import SIZES, _write_pair

    from pixelclip.engine import build_parser, train_net

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for stem, (h, w) in zip("ab", SIZES):
        _write_pair(root, stem, h, w, rng)
    name = "presets_train_net_val_sem_seg"
    register_sem_seg_dataset(
        name, root / "images", root / "labels", ["cat", "sky, heaven", "road"], ".png", replace=True
    )
    try:
        args = build_parser().parse_args(
            ["--config-file", str(files["config"]), "--eval-only", "--preset", "training-free"]
            + ["DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "out")]
            + ["MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE", "single", "INPUT.MIN_SIZE_TEST", "64"]
            + ["MODEL.PIXELCLIP.TEST.SLIDE_CROP", "32", "MODEL.PIXELCLIP.TEST.SLIDE_STRIDE", "16"]
        )
        results = train_net(args)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    run = tables.load_runs(tmp_path / "out" / "results.json")[0]
    entry = run["benchmarks"][name]
    assert run["preset"] == "training-free" and run["command"].startswith("tools/train_net.py")
    assert entry["readout"] == "training_free" and entry["num_queries"] == 4
    assert entry["window"] == {"protocol": "slide", "crop": 32, "stride": 16}
    assert entry["test_size"][0] == 64 and entry["prompt_ensemble"] == "single"
    assert entry["prob_threshold"] == 0.0 and entry["background"] is None
    assert results[name]["sem_seg"]["mIoU"] == entry["mIoU"]
    assert (tmp_path / "out" / "results.md").is_file()
