"""Lazy SA-1B / image-folder registration in detectron2's DatasetCatalog."""

import logging
import os

import data_factory
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from pixelclip.config import add_pixelclip_config
from pixelclip.data import sa1b
from pixelclip.data.sa1b import (
    load_sa1b_annotations,
    register_all_sa1b,
    register_image_folder,
    register_sa1b,
    register_sa1b_from_config,
)


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
    with pytest.raises(FileNotFoundError, match=r"no SA-1B image \(\*\.jpg\) found"):
        sa1b.load_sa1b_dicts(tmp_path)


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
