"""Lazy SA-1B / image-folder registration in detectron2's DatasetCatalog."""

import logging
import os
from pathlib import Path

import data_factory
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from pixelclip.config import add_pixelclip_config
from pixelclip.data import sa1b
from pixelclip.data.mapper import SA1BDatasetMapper
from pixelclip.data.sa1b import (
    load_sa1b_annotations,
    register_all_sa1b,
    register_image_folder,
    register_sa1b,
    register_sa1b_from_config,
)
from pixelclip.masks.cli import main as generate_masks_main
from pixelclip.masks.writer import find_images, output_paths


@pytest.fixture
def catalog():
    """Names registered by a test are removed after it; "sa1b_train" is restored to default."""
    names = []
    yield names
    for name in [*names, "sa1b_train"]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_sa1b("sa1b_train")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "sa1b"
    data_factory.write_sa1b_folder(root, {"sa_000001": 2, "sa_000000": 10}, 16, 16, num_masks=1)
    return root


def _ids(dicts):
    return [d["image_id"] for d in dicts]


def test_registration_is_lazy_and_a_missing_root_is_named(tmp_path, monkeypatch, catalog):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(missing))

    def no_listing(*args, **kwargs):
        raise AssertionError("the file system was touched at registration time")

    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(sa1b, "_existing_root", no_listing)
    monkeypatch.setattr(sa1b, "_scan", no_listing)
    register_all_sa1b()
    register_sa1b("sa1b_lazy_test", root=tmp_path / "also_missing")
    catalog.append("sa1b_lazy_test")
    monkeypatch.undo()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(missing))
    with pytest.raises(FileNotFoundError, match=r"nowhere/sa1b.*DETECTRON2_DATASETS"):
        DatasetCatalog.get("sa1b_train")
    with pytest.raises(FileNotFoundError, match="also_missing"):
        DatasetCatalog.get("sa1b_lazy_test")


def test_default_root_follows_the_environment_when_loaded(tree, monkeypatch, catalog):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/nonexistent")
    register_sa1b("sa1b_train")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tree.parent))  # changed after registration
    dicts = DatasetCatalog.get("sa1b_train")
    # Shards in order, images in numeric order within a shard ("sa_10" after "sa_9").
    assert _ids(dicts) == [f"sa_{i}" for i in [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2]]
    first = dicts[0]
    assert first["file_name"] == str(tree / "sa_000000" / "sa_3.jpg")
    assert first["annotation_file"] == str(tree / "sa_000000" / "sa_3.json")
    assert set(first) == {"file_name", "annotation_file", "image_id"}


def test_subset_cap_and_config(tree, tmp_path, caplog, catalog):
    subset = tmp_path / "subset.txt"
    subset.write_text("# five percent\nsa_2\nsa_000000/sa_10.jpg\n\nsa_5.jpg  # a comment\nsa_99\n")
    with caplog.at_level(logging.WARNING):
        dicts = sa1b.load_sa1b_dicts(tree, subset)
    assert _ids(dicts) == ["sa_2", "sa_10", "sa_5"]  # the file's order
    assert "1 of 4 images" in caplog.text and "sa_99.jpg" in caplog.text
    assert _ids(sa1b.load_sa1b_dicts(tree, None, max_images=2)) == ["sa_3", "sa_4"]

    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.DATASETS.SA1B.ROOT = str(tree)
    cfg.DATASETS.SA1B.SUBSET = str(subset)
    cfg.DATASETS.SA1B.MAX_IMAGES = 2
    register_all_sa1b()
    register_sa1b_from_config(cfg)  # replaces the default registration
    assert _ids(DatasetCatalog.get("sa1b_train")) == ["sa_2", "sa_10"]
    assert MetadataCatalog.get("sa1b_train").root == str(tree)

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt.*names no image"):
        sa1b.load_sa1b_dicts(tree, empty)
    with pytest.raises(FileNotFoundError, match="subset list 'missing.txt' not found"):
        sa1b.load_sa1b_dicts(tree, "missing.txt")


def test_root_without_images_is_an_error(tmp_path):
    (tmp_path / "sa_000000").mkdir()
    (tmp_path / "sa_000000" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"no image \(\.jpg, .*\) found under"):
        sa1b.load_sa1b_dicts(tmp_path)


def test_own_png_images_at_any_depth_are_listed(tmp_path):
    from PIL import Image

    for rel in ("b/10.png", "b/2.webp", "a/x/y/deep.jpeg", "top.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    (tmp_path / "b" / "2.json").write_text("{}")  # annotations are not images
    assert sa1b.list_sa1b_images(tmp_path) == ["top.jpg", "a/x/y/deep.jpeg", "b/2.webp", "b/10.png"]


def test_image_folder_registration(tmp_path, catalog):
    data_factory.write_sample(tmp_path / "b", "x2", 8, 8)
    data_factory.write_sample(tmp_path / "b", "x10", 8, 8)
    data_factory.write_sample(tmp_path / "a", "z", 8, 8, mode="RGBA")
    (tmp_path / "notes.txt").write_text("not an image")
    register_image_folder("my_images", tmp_path)
    catalog.append("my_images")
    dicts = DatasetCatalog.get("my_images")
    assert _ids(dicts) == ["a/z", "b/x2", "b/x10"]
    assert dicts[0]["file_name"] == str(tmp_path / "a" / "z.png")
    register_image_folder("my_images", tmp_path, max_images=1)  # re-registration replaces
    assert len(DatasetCatalog.get("my_images")) == 1
    register_image_folder("my_images", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        DatasetCatalog.get("my_images")


def test_load_annotations_reports_the_file(tmp_path):
    s = data_factory.write_sample(tmp_path, "sa_1", 16, 16, num_masks=3)
    segs, info = load_sa1b_annotations(s["annotation_file"])
    assert len(segs) == 3 and segs[0]["size"] == [16, 16] and info["height"] == 16
    path = tmp_path / "sa_1.json"
    path.write_text('{"annotations": [{"segmentation": [[1, 2, 3]]}]}')  # a polygon, not RLE
    with pytest.raises(sa1b.SA1BFormatError, match=r"sa_1\.json: annotations\[0\] needs"):
        load_sa1b_annotations(path)
    path.write_text("[]")
    with pytest.raises(sa1b.SA1BFormatError, match="'annotations' list"):
        load_sa1b_annotations(path)


# ------------------------------------------------------------ annotations in a separate tree
REPO = Path(__file__).resolve().parents[1]


def _pixelclip_cfg():
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    return cfg


def _split_tree(tmp_path):
    """Images under ``images/``, their JSON moved to the same relative paths under ``masks/``."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    samples = [
        data_factory.write_sample(images, "top", 16, 16, num_masks=2, seed=1),
        data_factory.write_sample(images / "sub", "x.v2", 16, 16, num_masks=3, seed=2),
        data_factory.write_sample(images / "deep" / "er", "sa_7", 16, 16, num_masks=4, seed=3),
    ]
    for s in samples:
        src = Path(s["annotation_file"])
        dst = masks / src.relative_to(images)
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        s["annotation_file"] = str(dst)
    return images, masks, samples


def test_annotation_root_mirrors_the_image_tree(tmp_path, caplog, catalog):
    images, masks, samples = _split_tree(tmp_path)
    subset = tmp_path / "subset.txt"
    subset.write_text("top\nsub/x.v2.jpg\ndeep/er/sa_7.jpg\n")  # the deeper image via a path
    dicts = sa1b.load_sa1b_dicts(images, subset, annotation_root=masks)
    assert [d["annotation_file"] for d in dicts] == [
        str(masks / "top.json"),
        str(masks / "sub" / "x.v2.json"),
        str(masks / "deep" / "er" / "sa_7.json"),
    ]
    assert [d["file_name"] for d in dicts] == [s["file_name"] for s in samples]
    assert _ids(dicts) == ["top", "x.v2", "sa_7"]
    # Without the key nothing changes: the loader still points next to each image.
    plain = sa1b.load_sa1b_dicts(images, subset)
    assert plain[1]["annotation_file"] == str(images / "sub" / "x.v2.json")

    # The config path: the listing finds the images at every depth.
    cfg = _pixelclip_cfg()
    cfg.DATASETS.SA1B.ROOT = str(images)
    cfg.DATASETS.SA1B.ANNOTATION_ROOT = str(masks)
    register_sa1b_from_config(cfg)
    listed = DatasetCatalog.get("sa1b_train")
    assert [(d["file_name"], d["annotation_file"]) for d in listed] == [
        (str(images / "top.jpg"), str(masks / "top.json")),
        (str(images / "deep" / "er" / "sa_7.jpg"), str(masks / "deep" / "er" / "sa_7.json")),
        (str(images / "sub" / "x.v2.jpg"), str(masks / "sub" / "x.v2.json")),
    ]
    assert MetadataCatalog.get("sa1b_train").annotation_root == str(masks)

    # The JSON files are read from the annotation tree, by the reader and by the mapper.
    mapper = SA1BDatasetMapper(augmentations=[], mask_resolution=16)
    for d, s in zip(dicts, samples):
        segs, _ = load_sa1b_annotations(d["annotation_file"])
        assert len(segs) == len(s["masks"])
        out = mapper(d)
        assert out is not None
        # Identity geometry on a 16 x 16 grid: the stored masks come back (largest first).
        got = sorted(m.tobytes() for m in out["masks"].numpy())
        assert got == sorted(m.tobytes() for m in s["masks"] if m.any())

    # A missing annotation file keeps the mapper's behaviour: a warning naming it, a skip.
    os.remove(masks / "top.json")
    with caplog.at_level(logging.WARNING):
        assert mapper(dicts[0]) is None
    assert str(masks / "top.json") in caplog.text and "annotation file not found" in caplog.text


def test_missing_annotation_root_names_the_key_when_loaded(tmp_path, catalog):
    images, _, _ = _split_tree(tmp_path)
    nowhere = tmp_path / "no_masks_here"
    register_sa1b("sa1b_ann_test", root=images, annotation_root=nowhere)  # lazy: no error yet
    catalog.append("sa1b_ann_test")
    cfg = _pixelclip_cfg()
    cfg.DATASETS.SA1B.ROOT = str(images)
    cfg.DATASETS.SA1B.ANNOTATION_ROOT = str(nowhere)
    register_sa1b_from_config(cfg)
    pattern = r"'.*no_masks_here'.*DATASETS\.SA1B\.ANNOTATION_ROOT"
    for name in ("sa1b_ann_test", "sa1b_train"):
        with pytest.raises(FileNotFoundError, match=pattern):
            DatasetCatalog.get(name)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(FileNotFoundError, match="a_file.*DATASETS.SA1B.ANNOTATION_ROOT"):
        sa1b.load_sa1b_dicts(images, annotation_root=tmp_path / "a_file")


def test_generate_masks_output_tree_is_what_the_loader_reads(tmp_path, capsys, catalog):
    images, masks = tmp_path / "my_images", tmp_path / "my_masks"
    data_factory.write_sample(images, "a", 12, 20, num_masks=1, seed=1)
    data_factory.write_sample(images / "shard", "b.v2", 12, 20, num_masks=1, seed=2)
    upper = data_factory.write_sample(images / "shard", "c", 12, 20, num_masks=1, seed=3)
    Path(upper["file_name"]).rename(images / "shard" / "c.JPG")
    for json_file in images.rglob("*.json"):
        json_file.unlink()  # only the tool's output counts

    found = find_images(images)
    expected = {str(i): str(o) for i, o in zip(found, output_paths(found, images, masks))}
    assert len(expected) == 3 and all(o.startswith(str(masks)) for o in expected.values())

    def left_half(image):
        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[:, : image.shape[1] // 2] = True
        return [{"segmentation": mask}]

    argv = ["--input", str(images), "--output", str(masks), "--source", "dino", "--no-progress"]
    assert generate_masks_main(argv, mask_fn=left_half) == 0
    assert "processed 3, skipped 0, failed 0" in capsys.readouterr().out
    assert sorted(str(p) for p in masks.rglob("*.json")) == sorted(expected.values())

    cfg = _pixelclip_cfg()
    cfg.merge_from_list(
        ["DATASETS.SA1B.ROOT", str(images), "DATASETS.SA1B.ANNOTATION_ROOT", str(masks)]
    )
    register_sa1b_from_config(cfg)
    dicts = DatasetCatalog.get("sa1b_train")
    assert {d["file_name"]: d["annotation_file"] for d in dicts} == expected
    mapper = SA1BDatasetMapper(augmentations=[], mask_resolution=4)
    for d in dicts:
        out = mapper(d)
        assert out is not None and out["masks"].shape == (1, 4, 4)
        assert out["masks"][0, :, :2].all() and not out["masks"][0, :, 2:].any()
