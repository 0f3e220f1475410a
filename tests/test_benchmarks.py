"""Benchmark registration (pixelclip.data.benchmarks) on generated folders in the real formats."""

from __future__ import annotations

import builtins
import glob
import importlib.util
import io
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from pixelclip.data.benchmarks import (
    load_class_names,
    load_sem_seg_files,
    register_all_benchmarks,
    register_sem_seg_dataset,
    voc_colormap,
)

REPO = Path(__file__).resolve().parents[1]

# Written independently of the module: name -> (classes, image folder, label folder, image
# suffix, label suffix) as documented in datasets/README.md.
LAYOUT = {
    "coco_stuff_171_val_sem_seg": (171, "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/val2017", ".jpg", ".png"),
    "ade20k_150_val_sem_seg": (150, "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation", ".jpg", ".png"),
    "pascal_context_59_val_sem_seg": (59, "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc59_val", ".jpg", ".png"),
    "pascal_context_60_val_sem_seg": (60, "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc60_val", ".jpg", ".png"),
    "cityscapes_19_val_sem_seg": (19, "cityscapes/leftImg8bit/val/frankfurt",
        "cityscapes/gtFine/val/frankfurt", "_leftImg8bit.png", "_gtFine_labelTrainIds.png"),
    "voc_20_val_sem_seg": (20, "VOCdevkit/VOC2012/JPEGImages",
        "VOCdevkit/VOC2012/annotations_detectron2/voc20_val", ".jpg", ".png"),
    "voc_21_val_sem_seg": (21, "VOCdevkit/VOC2012/JPEGImages",
        "VOCdevkit/VOC2012/annotations_detectron2/voc21_val", ".jpg", ".png"),
    "coco_object_81_val_sem_seg": (81, "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/coco_object_val2017", ".jpg", ".png"),
    "pascal_context_459_val_sem_seg": (459, "VOCdevkit/VOC2010/JPEGImages",
        "VOCdevkit/VOC2010/annotations_detectron2/pc459_val", ".jpg", ".png"),
    "ade20k_847_val_sem_seg": (847, "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation", ".jpg", ".png"),
}  # fmt: skip
# Benchmarks of more than 255 classes: 16-bit label maps, 65535 = ignore.
IGNORE_16BIT = {"pascal_context_459_val_sem_seg", "ade20k_847_val_sem_seg"}


@pytest.fixture(autouse=True)
def default_registration():
    """Every test starts and ends with the default (environment-based) registration."""
    register_all_benchmarks()
    yield
    register_all_benchmarks()


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def make_benchmark_tree(root: Path, stems=("img_a", "img_b")) -> None:
    """Images and uint8 label PNGs of every benchmark, at the documented places."""
    for n_cls, image_dir, gt_dir, image_ext, gt_ext in LAYOUT.values():
        for k, stem in enumerate(stems):
            write_image(root / image_dir / f"{stem}{image_ext}", np.full((8, 8, 3), 40 * k))
            label = np.full((8, 8), k % n_cls)
            label[0] = 255
            write_image(root / gt_dir / f"{stem}{gt_ext}", label)


def test_class_name_lists():
    counts = {"coco_stuff_171": 171, "ade20k_150": 150, "pascal_context_59": 59,
              "pascal_context_60": 60, "cityscapes_19": 19, "voc_20": 20, "voc_21": 21,
              "coco_object_81": 81, "pascal_context_459": 459, "ade20k_847": 847}  # fmt: skip
    for key, n in counts.items():
        names = load_class_names(key)
        assert len(names) == n, key
        assert len(set(names)) == n, f"{key} has duplicates"
        assert all(isinstance(s, str) and s == s.strip() and s for s in names), key
    assert load_class_names("voc_21") == ["background", *load_class_names("voc_20")]
    assert load_class_names("pascal_context_60") == [
        "background",
        *load_class_names("pascal_context_59"),
    ]
    coco = load_class_names("coco_stuff_171")
    assert (coco[0], coco[79], coco[80], coco[170]) == ("person", "toothbrush", "banner", "wood")
    ade = load_class_names("ade20k_150")
    assert (ade[0], ade[7], ade[149]) == ("wall", "bed", "flag")
    city = load_class_names("cityscapes_19")
    assert (city[0], city[13], city[18]) == ("road", "car", "bicycle")
    # the returned list is a copy: callers may edit it
    coco.append("x")
    assert len(load_class_names("coco_stuff_171")) == 171
    with pytest.raises(ValueError, match=r"unknown class-name list 'ade20k_848'.*voc_21"):
        load_class_names("ade20k_848")


def test_class_names_ship_as_package_data():
    folder = REPO / "pixelclip" / "data" / "class_names"
    files = sorted(p.name for p in folder.glob("*.json"))
    assert files == sorted(
        f"{k}.json" for k in ["coco_stuff_171", "ade20k_150", "pascal_context_59",
                              "pascal_context_60", "cityscapes_19", "voc_20", "voc_21",
                              "coco_object_81", "pascal_context_459", "ade20k_847"]
    )  # fmt: skip
    assert json.loads((folder / "voc_20.json").read_text())[14] == "person"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "data/class_names/*.json" in pyproject


def test_metadata_of_every_benchmark(tmp_path):
    register_all_benchmarks(tmp_path)
    for name, (n_cls, image_dir, gt_dir, _, _) in LAYOUT.items():
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == n_cls, name
        assert meta.ignore_label == (65535 if name in IGNORE_16BIT else 255), name
        assert meta.evaluator_type == "sem_seg", name
        assert len(meta.stuff_colors) == n_cls, name
        assert len({tuple(c) for c in meta.stuff_colors}) == n_cls, f"{name}: repeated colours"
        assert meta.image_root == str(tmp_path / image_dir.removesuffix("/frankfurt"))
        assert meta.sem_seg_root == str(tmp_path / gt_dir.removesuffix("/frankfurt"))
    assert MetadataCatalog.get("cityscapes_19_val_sem_seg").stuff_colors[0] == [128, 64, 128]


def test_no_clash_with_detectron2_builtin_datasets():
    registered = DatasetCatalog.list()
    for name in LAYOUT:
        assert name in registered
    # detectron2's own registrations are still there with their own metadata
    assert "ade20k_sem_seg_val" in registered and "cityscapes_fine_sem_seg_val" in registered
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"
    assert MetadataCatalog.get("ade20k_sem_seg_val").stuff_classes[0] == "wall"


def test_voc_colormap_known_entries():
    cmap = voc_colormap(256)
    # VOC's official colours: background, aeroplane, bicycle, bird, person, border (255)
    assert cmap[0] == [0, 0, 0] and cmap[1] == [128, 0, 0] and cmap[2] == [0, 128, 0]
    assert cmap[3] == [128, 128, 0] and cmap[15] == [192, 128, 128]
    assert cmap[255] == [224, 224, 192]
    assert len({tuple(c) for c in cmap}) == 256


def test_every_benchmark_loads_generated_folders(tmp_path, monkeypatch):
    make_benchmark_tree(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_all_benchmarks()
    for name, (_, image_dir, gt_dir, image_ext, gt_ext) in LAYOUT.items():
        dicts = DatasetCatalog.get(name)
        assert dicts == [
            {"file_name": str(tmp_path / image_dir / f"{s}{image_ext}"),
             "sem_seg_file_name": str(tmp_path / gt_dir / f"{s}{gt_ext}")}
            for s in ("img_a", "img_b")
        ], name  # fmt: skip


def test_root_is_read_when_the_loader_runs(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "elsewhere"))
    register_all_benchmarks()  # as at import, before the user's environment is final
    make_benchmark_tree(tmp_path / "data")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.benchmarks"):
        dicts = DatasetCatalog.get("voc_20_val_sem_seg")
    assert dicts[0]["file_name"].startswith(str(tmp_path / "data"))
    assert "changed since registration" in caplog.text


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_all_benchmarks()
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("ade20k_150_val_sem_seg")
    msg = str(err.value)
    assert str(tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation") in msg
    assert "$DETECTRON2_DATASETS" in msg and "prepare_ade20k_150.py" in msg
    # a folder that exists but holds no label file
    (tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation").mkdir(
        parents=True
    )
    (tmp_path / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no \(image, label\) pair found"):
        DatasetCatalog.get("ade20k_150_val_sem_seg")


def test_labels_without_images_and_partial_splits_warn(tmp_path, caplog):
    write_image(tmp_path / "img" / "a.jpg", np.zeros((4, 4, 3)))
    write_image(tmp_path / "img" / "extra.jpg", np.zeros((4, 4, 3)))  # unlabelled: not listed
    write_image(tmp_path / "gt" / "a.png", np.zeros((4, 4)))
    write_image(tmp_path / "gt" / "b.png", np.zeros((4, 4)))  # no image
    write_image(tmp_path / "gt" / ".a.png.tmp.png", np.zeros((4, 4)))  # unfinished write
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.benchmarks"):
        dicts = load_sem_seg_files(
            str(tmp_path / "img"), str(tmp_path / "gt"), "jpg", "png", expected_count=500
        )
    assert dicts == [
        {"file_name": str(tmp_path / "img" / "a.jpg"),
         "sem_seg_file_name": str(tmp_path / "gt" / "a.png")}
    ]  # fmt: skip
    assert "1 label files have no image" in caplog.text and "official split has 500" in caplog.text


def test_custom_dataset_with_semseg_evaluator(tmp_path):
    """register_sem_seg_dataset + detectron2's SemSegEvaluator on a hand-computed case."""
    gt = np.zeros((4, 4), np.uint8)
    gt[:, 2:] = 1  # left half "cat", right half "dog"
    gt[0, 2:] = 255  # two ignored pixels
    write_image(tmp_path / "images" / "x.jpg", np.zeros((4, 4, 3)))
    write_image(tmp_path / "labels" / "x.png", gt)
    name = "_test_custom_sem_seg"
    register_sem_seg_dataset(
        name, tmp_path / "images", tmp_path / "labels", ["cat", "dog, puppy", "sky"]
    )
    try:
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == ["cat", "dog, puppy", "sky"] and meta.ignore_label == 255
        with pytest.raises(ValueError, match="already registered"):
            register_sem_seg_dataset(name, tmp_path / "images", tmp_path / "labels", ["cat"])
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        logits = torch.zeros(3, 4, 4)
        logits[0] = 1.0  # predict "cat" everywhere
        evaluator.process(
            [{"file_name": str(tmp_path / "images" / "x.jpg")}], [{"sem_seg": logits}]
        )
        res = evaluator.evaluate()["sem_seg"]
        # 14 valid pixels: cat IoU = 8 / 14, dog IoU = 0 / 6, sky absent (not averaged)
        assert res["IoU-cat"] == pytest.approx(100 * 8 / 14)
        assert res["mIoU"] == pytest.approx(100 * 8 / 14 / 2)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_sem_seg_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="class_names is empty"):
        register_sem_seg_dataset("_test_empty", tmp_path, tmp_path, [])
    with pytest.raises(ValueError, match="2 stuff_colors for 3 classes"):
        register_sem_seg_dataset("_test_colors", tmp_path, tmp_path, ["a", "b", "c"],
                                 stuff_colors=[[0, 0, 0], [1, 1, 1]])  # fmt: skip
    assert "_test_empty" not in DatasetCatalog.list()


def test_import_and_registration_touch_no_dataset_file(tmp_path, monkeypatch):
    """Executing the module and registering list, stat or open nothing under the dataset root."""
    make_benchmark_tree(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    touched = []

    def spy(fn):
        def wrapper(*args, **kwargs):
            if args and str(tmp_path) in str(args[0]):
                touched.append(fn.__name__)
            return fn(*args, **kwargs)

        return wrapper

    for module, attr in [
        (os, "listdir"),
        (os, "scandir"),
        (os, "walk"),
        (os, "stat"),
        (builtins, "open"),
        (io, "open"),
        (glob, "glob"),
        (glob, "iglob"),
    ]:
        monkeypatch.setattr(module, attr, spy(getattr(module, attr)))  # fmt: skip
    spec = importlib.util.spec_from_file_location(
        "_fresh_benchmarks", REPO / "pixelclip" / "data" / "benchmarks.py"
    )
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fresh)  # dataclasses look their module up there
    spec.loader.exec_module(fresh)  # the module's import-time code, run again
    fresh.register_all_benchmarks()
    fresh.register_all_benchmarks(tmp_path)
    assert touched == []
    DatasetCatalog.get("ade20k_150_val_sem_seg")
    assert "walk" in touched and "stat" in touched  # the spies do see the loader's accesses
