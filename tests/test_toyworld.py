"""ToyWorld generator, on-disk writer and detectron2 registration (pixelclip/toyworld/)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pixelclip.toyworld import (
    TOYWORLD_CLASSES,
    TOYWORLD_DATASETS,
    TOYWORLD_STUFF,
    TOYWORLD_THINGS,
    generate_toyworld,
    load_toyworld_sem_seg_dicts,
    register_toyworld,
    write_toyworld,
)

SIZE = 64
LOCATION_WORDS = {
    "left",
    "right",
    "top",
    "bottom",
    "above",
    "below",
    "under",
    "over",
    "on",
    "in",
    "center",
    "centre",
    "middle",
    "corner",
    "near",
    "behind",
    "front",
}


@pytest.fixture(scope="module")
def batch():
    return generate_toyworld(8, image_size=SIZE, seed=3)


def test_classes():
    assert len(TOYWORLD_CLASSES) >= 12
    assert TOYWORLD_CLASSES == TOYWORLD_STUFF + TOYWORLD_THINGS
    assert len(set(TOYWORLD_CLASSES)) == len(TOYWORLD_CLASSES)
    assert all(re.fullmatch(r"[a-z]+", n) for n in TOYWORLD_CLASSES)


def test_shapes_and_dtypes(batch):
    assert batch.images.shape == (8, SIZE, SIZE, 3) and batch.images.dtype == np.uint8
    assert batch.labels.shape == (8, SIZE, SIZE) and batch.labels.dtype == np.uint8
    assert int(batch.labels.max()) < len(TOYWORLD_CLASSES)
    assert len(batch.masks) == len(batch.captions) == 8
    for m in batch.masks:
        assert m.dtype == bool and m.ndim == 3 and m.shape[1:] == (SIZE, SIZE) and len(m) > 0


def test_deterministic_and_independent_of_chunking(batch):
    again = generate_toyworld(8, image_size=SIZE, seed=3)
    np.testing.assert_array_equal(again.images, batch.images)
    np.testing.assert_array_equal(again.labels, batch.labels)
    assert again.captions == batch.captions
    tail = generate_toyworld(3, image_size=SIZE, seed=3, start=5)
    np.testing.assert_array_equal(tail.images, batch.images[5:])
    for a, b in zip(tail.masks, batch.masks[5:]):
        np.testing.assert_array_equal(a, b)
    other_seed = generate_toyworld(8, image_size=SIZE, seed=4)
    dev = generate_toyworld(8, image_size=SIZE, seed=3, split="dev")
    assert not np.array_equal(other_seed.images, batch.images)
    assert not np.array_equal(dev.images, batch.images)


def test_every_image_has_stuff_and_things(batch):
    ns = len(TOYWORLD_STUFF)
    for lab in batch.labels:
        assert (lab < ns).any() and (lab >= ns).any()


def test_things_vary_in_size_and_position():
    labels = generate_toyworld(40, image_size=SIZE, seed=0).labels
    ball = TOYWORLD_CLASSES.index("ball")
    areas = [int((lab == ball).sum()) for lab in labels if (lab == ball).sum() >= 20]
    assert len(areas) >= 5 and max(areas) > 2 * min(areas)
    rows = [np.nonzero(lab >= len(TOYWORLD_STUFF))[0].mean() for lab in labels]
    cols = [np.nonzero(lab >= len(TOYWORLD_STUFF))[1].mean() for lab in labels]
    assert np.ptp(rows) > SIZE / 3 and np.ptp(cols) > SIZE / 3


def test_masks_are_class_pure_cover_the_image_and_over_segment(batch):
    n_masks, n_regions = 0, 0
    for masks, lab in zip(batch.masks, batch.labels):
        covered = np.zeros(lab.shape, dtype=bool)
        for m in masks:
            assert m.sum() >= 4
            assert len(np.unique(lab[m])) == 1, "a mask straddles two classes"
            covered |= m
        assert covered.mean() > 0.97
        n_masks += len(masks)
        n_regions += len(np.unique(lab))
    assert n_masks > 1.5 * n_regions  # over-segmented: more masks than class regions


def test_captions_name_exactly_the_visible_classes(batch):
    min_pixels = round(0.005 * SIZE * SIZE)
    prefix = r"(a photo of|a picture of|an image of|a drawing of)"
    for caption, lab in zip(batch.captions, batch.labels):
        m = re.fullmatch(prefix + r" (.+)\.", caption)
        assert m, caption
        items = re.split(r", | and ", m.group(2))
        named = set()
        for item in items:
            word = item[2:] if item.startswith("a ") else item
            assert word in TOYWORLD_CLASSES, item
            assert item.startswith("a ") == (word in TOYWORLD_THINGS), item  # articles on things
            named.add(word)
        assert len(named) == len(items)
        counts = np.bincount(lab.ravel(), minlength=len(TOYWORLD_CLASSES))
        visible = {TOYWORLD_CLASSES[c] for c in np.flatnonzero(counts >= min_pixels)}
        assert named == visible
        assert not set(re.findall(r"[a-z]+", m.group(2))) & LOCATION_WORDS


def test_caption_order_is_shuffled():
    captions = generate_toyworld(40, image_size=SIZE, seed=0).captions
    firsts = {re.split(r", | and ", c.split(" of ", 1)[1])[0] for c in captions}
    # With a fixed class order the first item would almost always be a stuff word.
    assert any(f.startswith("a ") for f in firsts) and any(not f.startswith("a ") for f in firsts)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_toyworld(2, split="val")
    with pytest.raises(ValueError, match="image_size"):
        generate_toyworld(2, image_size=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyworld")
    meta = write_toyworld(root, num_train=4, num_dev=3, num_test=2, image_size=SIZE, seed=1)
    return root, meta


def _bbox(m):
    ys, xs = np.nonzero(m)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_train_files_are_sa1b_format(world):
    root, meta = world
    ref = generate_toyworld(4, image_size=SIZE, seed=1, split="train")
    captions = json.loads((root / "train" / "captions.json").read_text())
    assert captions == {f"{i:06d}": c for i, c in enumerate(ref.captions)}
    assert json.loads((root / "class_names.json").read_text()) == list(TOYWORLD_CLASSES)
    assert meta["class_names"] == list(TOYWORLD_CLASSES)
    for i in range(4):
        img = np.asarray(Image.open(root / "train" / f"{i:06d}.png").convert("RGB"))
        np.testing.assert_array_equal(img, ref.images[i])  # PNG: lossless
        record = json.loads((root / "train" / f"{i:06d}.json").read_text())
        assert record["image"] == {
            "image_id": i,
            "file_name": f"{i:06d}.png",
            "height": SIZE,
            "width": SIZE,
        }
        anns = record["annotations"]
        assert len(anns) == len(ref.masks[i])
        for k, (ann, m) in enumerate(zip(anns, ref.masks[i])):
            assert set(ann) == {"id", "segmentation", "area", "bbox"}  # no class ids
            assert ann["id"] == k and ann["segmentation"]["size"] == [SIZE, SIZE]
            assert isinstance(ann["segmentation"]["counts"], str)
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)
            assert ann["area"] == int(m.sum())
            np.testing.assert_allclose(ann["bbox"], _bbox(m))
    assert not (root / "train" / "labels").exists()


def test_dev_test_files(world):
    root, _ = world
    for split, n in (("dev", 3), ("test", 2)):
        ref = generate_toyworld(n, image_size=SIZE, seed=1, split=split)
        for i in range(n):
            img = np.asarray(Image.open(root / split / "images" / f"{i:06d}.png").convert("RGB"))
            np.testing.assert_array_equal(img, ref.images[i])
            label = Image.open(root / split / "labels" / f"{i:06d}.png")
            assert label.mode == "L"
            np.testing.assert_array_equal(np.asarray(label), ref.labels[i])
        captions = json.loads((root / split / "captions.json").read_text())
        assert list(captions.values()) == ref.captions


def test_write_is_cached_and_refuses_a_different_world(world):
    root, meta = world
    mtime = (root / "train" / "000000.png").stat().st_mtime_ns
    assert write_toyworld(root, num_train=4, num_dev=3, num_test=2, image_size=SIZE, seed=1) == meta
    assert (root / "train" / "000000.png").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="overwrite"):
        write_toyworld(root, num_train=5, num_dev=3, num_test=2, image_size=SIZE, seed=1)


def test_registration_is_lazy_and_complete(world, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    missing = tmp_path / "nothing_here"
    names = register_toyworld(missing, prefix="tw_lazy")  # no disk access at registration
    assert names == ["tw_lazy_train", "tw_lazy_dev_sem_seg", "tw_lazy_test_sem_seg"]
    with pytest.raises(FileNotFoundError, match="meta.json"):
        DatasetCatalog.get("tw_lazy_dev_sem_seg")

    root, _ = world
    register_toyworld(root, prefix="tw_lazy")  # re-registering replaces the old root
    dev = DatasetCatalog.get("tw_lazy_dev_sem_seg")
    assert len(dev) == 3 and len(DatasetCatalog.get("tw_lazy_test_sem_seg")) == 2
    assert dev[1] == {
        "file_name": str(root / "dev/images/000001.png"),
        "sem_seg_file_name": str(root / "dev/labels/000001.png"),
        "height": SIZE,
        "width": SIZE,
        "image_id": "000001",
    }
    meta = MetadataCatalog.get("tw_lazy_test_sem_seg")
    assert meta.stuff_classes == list(TOYWORLD_CLASSES) and meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg"
    assert meta.image_root == str(root / "test/images")
    assert meta.sem_seg_root == str(root / "test/labels")
    train = DatasetCatalog.get("tw_lazy_train")
    assert len(train) == 4
    assert train[2] == {
        "file_name": str(root / "train/000002.png"),
        "annotation_file": str(root / "train/000002.json"),
        "image_id": "000002",
        "height": SIZE,
        "width": SIZE,
    }


# Run in a fresh interpreter: DETECTRON2_DATASETS points at a folder that does not exist, and an
# audit hook records every file opened or listed below it while pixelclip is imported.
_IMPORT_PROBE = textwrap.dedent(
    """
    import json, os, sys

    root = os.environ["DETECTRON2_DATASETS"]
    touched = []

    def hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
            path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else ""
            if path.startswith(root):
                touched.append([event, path])

    sys.addaudithook(hook)
    import pixelclip  # noqa: F401
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = [n for n in DatasetCatalog.list() if n.startswith("toyworld_")]
    meta = MetadataCatalog.get("toyworld_dev_sem_seg")
    print(json.dumps({"touched": touched, "names": sorted(names),
                      "image_root": meta.image_root, "sem_seg_root": meta.sem_seg_root,
                      "exists": os.path.exists(root)}))
    """
)


def test_default_registration_at_import_touches_no_file(tmp_path):
    root = tmp_path / "not_yet"
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["touched"] == [] and not out["exists"]
    assert out["names"] == sorted(TOYWORLD_DATASETS)
    assert out["image_root"] == str(root / "toyworld" / "dev" / "images")
    assert out["sem_seg_root"] == str(root / "toyworld" / "dev" / "labels")


def test_default_registration_loads_the_world_under_the_dataset_root(world, tmp_path, monkeypatch):
    """The root is read when the dataset is loaded: a world written after registration (at
    ``$DETECTRON2_DATASETS/toyworld``, where the quickstart writes it) is found."""
    from detectron2.data import DatasetCatalog

    register_toyworld()  # the registration made at import (other tests may have replaced it)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "toyworld"))):
        DatasetCatalog.get("toyworld_test_sem_seg")
    root, _ = world
    shutil.copytree(root, tmp_path / "toyworld")
    dev = DatasetCatalog.get("toyworld_dev_sem_seg")
    assert len(dev) == 3 and len(DatasetCatalog.get("toyworld_test_sem_seg")) == 2
    assert dev[0]["file_name"] == str(tmp_path / "toyworld/dev/images/000000.png")
    assert dev[0]["sem_seg_file_name"] == str(tmp_path / "toyworld/dev/labels/000000.png")
    assert len(DatasetCatalog.get("toyworld_train")) == 4


def test_missing_label_is_reported(world, tmp_path):
    root, _ = world
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "dev" / "labels" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="000002.png"):
        load_toyworld_sem_seg_dicts(copy, "dev")
    with pytest.raises(ValueError, match="no labels"):
        load_toyworld_sem_seg_dicts(copy, "train")
