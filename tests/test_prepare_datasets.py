"""datasets/prepare_*.py on tiny fake releases in the official formats.

Each expected label is derived here from hand-written (raw id -> class) tables checked against the
class names, independently of the scripts' own tables.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import load_script
from detectron2.data import DatasetCatalog
from PIL import Image

from pixelclip.data.benchmarks import load_class_names, register_all_benchmarks

REPO = Path(__file__).resolve().parents[1]
SIZE = (16, 24)  # (H, W) of the fake label maps


def load_prepare_script(name: str):
    """Import datasets/<name>.py (the folder is not a package)."""
    return load_script(f"datasets/{name}.py", f"_prepare_{name}")


def tile(values: list[int], seed: int) -> np.ndarray:
    """A (H, W) map holding every value of ``values`` (shuffled), as int64."""
    rng = np.random.default_rng(seed)
    flat = np.resize(np.asarray(values, dtype=np.int64), SIZE[0] * SIZE[1])
    return rng.permutation(flat).reshape(SIZE)


def expected_from(raw: np.ndarray, table: dict[int, int], default: int = 255) -> np.ndarray:
    """Naive per-pixel mapping."""
    out = np.full(raw.shape, default, dtype=np.uint8)
    for (i, j), v in np.ndenumerate(raw):
        out[i, j] = table.get(int(v), default)
    return out


def write_jpg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")


def write_png(path: Path, array: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")  # keeps the values as palette indices
        img.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L", path
        return np.array(img)


# ------------------------------------------------------------------------------ ADE20K-150


def make_ade_release(base: Path, ids: list[str]) -> dict[str, np.ndarray]:
    raws = {}
    for n, i in enumerate(ids):
        raw = tile([0, 1, 2, 13, 150, 77], seed=n)
        write_png(base / "annotations" / "validation" / f"{i}.png", raw)
        write_jpg(base / "images" / "validation" / f"{i}.jpg", n)
        raws[i] = raw
    return raws


def test_ade20k_prepare_and_load(tmp_path, monkeypatch, catalog_restored, capsys):
    names = load_class_names("ade20k_150")
    # raw ADE ids: 0 = other (ignored), k = the k-th name of objectInfo150.
    table = {1: 0, 2: 1, 13: 12, 150: 149, 77: 76}
    assert (names[0], names[1], names[12], names[149], names[76]) == (
        "wall", "building", "person", "flag", "boat",
    )  # fmt: skip
    root, release = tmp_path / "root", tmp_path / "dl" / "ADEChallengeData2016"
    ids = ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    raws = make_ade_release(release, ids)
    script = load_prepare_script("prepare_ade20k_150")
    argv = ["--release", str(release), "--root", str(root), "--quiet"]
    assert script.main(argv) == 0  # count differs (3 != 2000): a warning only
    assert "official split has 2000" in capsys.readouterr().err
    out = root / "ADEChallengeData2016"
    for i in ids:
        got = read(out / "annotations_detectron2" / "validation" / f"{i}.png")
        np.testing.assert_array_equal(got, expected_from(raws[i], table))
        # hard link: same file, no copy
        assert os.path.samefile(out / "images" / "validation" / f"{i}.jpg",
                                release / "images" / "validation" / f"{i}.jpg")  # fmt: skip
    assert script.main([*argv, "--strict"]) == 2

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_all_benchmarks()
    dicts = DatasetCatalog.get("ade20k_150_val_sem_seg")
    assert [Path(d["file_name"]).name for d in dicts] == [f"{i}.jpg" for i in ids]
    assert [Path(d["sem_seg_file_name"]).parent for d in dicts] == [
        out / "annotations_detectron2" / "validation"
    ] * 3


def test_prepare_is_resumable_and_in_place(tmp_path, capsys):
    root = tmp_path / "root"
    release = root / "ADEChallengeData2016"  # release already under the root: used in place
    make_ade_release(release, ["a", "b"])
    script = load_prepare_script("prepare_ade20k_150")
    argv = ["--root", str(root), "--quiet"]
    assert script.main(argv) == 0
    assert "2 converted, 0 already done" in capsys.readouterr().out
    done = release / "annotations_detectron2" / "validation" / "a.png"
    stamp = done.stat().st_mtime_ns
    os.remove(release / "annotations_detectron2" / "validation" / "b.png")  # "interrupted" run
    assert script.main(argv) == 0
    assert "1 converted, 1 already done" in capsys.readouterr().out
    assert done.stat().st_mtime_ns == stamp
    assert script.main([*argv, "--overwrite"]) == 0
    assert "2 converted, 0 already done" in capsys.readouterr().out
    assert sorted(p.name for p in (release / "images" / "validation").iterdir()) == [
        "a.jpg", "b.jpg",
    ]  # fmt: skip
    # no temporary files left behind
    assert not [p for p in release.rglob(".*")]


def test_prepare_missing_folder_is_a_clear_error(tmp_path, capsys):
    script = load_prepare_script("prepare_ade20k_150")
    with pytest.raises(SystemExit) as err:
        script.main(["--root", str(tmp_path), "--quiet"])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert str(tmp_path / "ADEChallengeData2016" / "images" / "validation") in msg
    assert "ADEChallengeData2016.zip" in msg


def test_prepare_rejects_rgb_labels_and_reports_missing_images(tmp_path, capsys):
    release = tmp_path / "ADEChallengeData2016"
    make_ade_release(release, ["a", "b"])
    os.remove(release / "images" / "validation" / "b.jpg")
    script = load_prepare_script("prepare_ade20k_150")
    assert script.main(["--root", str(tmp_path), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "1 converted" in captured.out and "left out: b" in captured.err
    bad = release / "annotations" / "validation" / "a.png"
    Image.open(bad).convert("RGB").save(bad)
    with pytest.raises(ValueError, match=r"a\.png.*mode 'RGB'"):
        script.main(["--root", str(tmp_path), "--quiet", "--overwrite"])


# ------------------------------------------------------------------------------ COCO-Stuff


def test_coco_stuff_prepare_and_load(tmp_path, monkeypatch, catalog_restored):
    names = load_class_names("coco_stuff_171")
    # PNG value = COCO id - 1. Hand-checked: id 1 person, 13 stop sign (12 unused), 25 giraffe,
    # 90 toothbrush, 91 unused, 92 banner (first stuff), 182 wood; 255 unlabeled.
    table = {0: 0, 12: 11, 24: 23, 89: 79, 91: 80, 181: 170}
    assert [names[k] for k in table.values()] == [
        "person", "stop sign", "giraffe", "toothbrush", "banner", "wood",
    ]  # fmt: skip
    values = [*table, 11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 255]  # the last 12 are ignored
    root, dl = tmp_path / "root", tmp_path / "dl"
    ids = ["000000000139", "000000000285"]
    raws = {}
    for n, i in enumerate(ids):
        raws[i] = tile(values, seed=n)
        write_png(dl / "stuffthingmaps" / "val2017" / f"{i}.png", raws[i])
        write_jpg(dl / "val2017" / f"{i}.jpg", n)
    script = load_prepare_script("prepare_coco_stuff")
    argv = [
        "--images",
        str(dl / "val2017"),
        "--stuffthingmaps",
        str(dl / "stuffthingmaps" / "val2017"),
    ]
    assert script.main([*argv, "--root", str(root), "--quiet", "--link-mode", "copy"]) == 0
    out = root / "coco-stuff"
    for i in ids:
        got = read(out / "annotations_detectron2" / "val2017" / f"{i}.png")
        np.testing.assert_array_equal(got, expected_from(raws[i], table))
        copied = out / "images" / "val2017" / f"{i}.jpg"
        assert copied.read_bytes() == (dl / "val2017" / f"{i}.jpg").read_bytes()
        assert not os.path.samefile(copied, dl / "val2017" / f"{i}.jpg")

    register_all_benchmarks(root)
    dicts = DatasetCatalog.get("coco_stuff_171_val_sem_seg")
    assert [Path(d["file_name"]).name for d in dicts] == [f"{i}.jpg" for i in ids]


# ------------------------------------------------------------------------------ Cityscapes


def test_cityscapes_prepare_and_load(tmp_path, monkeypatch, catalog_restored):
    names = load_class_names("cityscapes_19")
    # labelIds of cityscapesscripts' labels.py -> trainId; everything else is ignored.
    table = {7: 0, 8: 1, 11: 2, 21: 8, 24: 11, 26: 13, 31: 16, 33: 18}
    assert [names[k] for k in table.values()] == [
        "road", "sidewalk", "building", "vegetation", "person", "car", "train", "bicycle",
    ]  # fmt: skip
    values = [*table, 0, 1, 4, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    release = tmp_path / "cityscapes"  # extracted in place under the root
    raws = {}
    for n, (city, stem) in enumerate(
        [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")]
    ):
        raws[stem] = tile(values, seed=n)
        write_png(release / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", raws[stem])
        write_png(release / "gtFine" / "val" / city / f"{stem}_gtFine_color.png", raws[stem])
        write_png(
            release / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png",
            np.zeros(SIZE, np.uint8),
        )
    script = load_prepare_script("prepare_cityscapes")
    assert script.main(["--root", str(tmp_path), "--quiet"]) == 0
    for city, stem in [
        ("frankfurt", "frankfurt_000000_000294"),
        ("lindau", "lindau_000000_000019"),
    ]:
        got = read(release / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png")
        np.testing.assert_array_equal(got, expected_from(raws[stem], table))

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_all_benchmarks()
    dicts = DatasetCatalog.get("cityscapes_19_val_sem_seg")
    stems = ["frankfurt_000000_000294", "lindau_000000_000019"]
    assert [Path(d["file_name"]).name for d in dicts] == [f"{s}_leftImg8bit.png" for s in stems]
    assert [Path(d["sem_seg_file_name"]).name for d in dicts] == [
        f"{s}_gtFine_labelTrainIds.png" for s in stems
    ]


# ------------------------------------------------------------------------------ Pascal VOC


def test_voc_prepare_and_load(tmp_path, catalog_restored):
    voc20, voc21 = load_class_names("voc_20"), load_class_names("voc_21")
    # SegmentationClass indices: 0 background, 1 aeroplane, 15 person, 20 tvmonitor, 255 border.
    t20 = {1: 0, 15: 14, 20: 19}
    t21 = {0: 0, 1: 1, 15: 15, 20: 20}
    assert [voc20[k] for k in t20.values()] == ["aeroplane", "person", "tvmonitor"]
    assert [voc21[k] for k in t21.values()] == ["background", "aeroplane", "person", "tvmonitor"]
    voc = tmp_path / "dl" / "VOC2012"
    ids = ["2007_000033", "2007_000042", "2007_000061"]
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    raws = {}
    for n, i in enumerate(ids):
        raws[i] = tile([0, 1, 15, 20, 255, 7], seed=n)
        write_png(voc / "SegmentationClass" / f"{i}.png", raws[i], mode="P")
        write_jpg(voc / "JPEGImages" / f"{i}.jpg", n)
    write_jpg(voc / "JPEGImages" / "2007_999999.jpg")  # not in the split: not linked
    root = tmp_path / "root"
    script = load_prepare_script("prepare_voc")
    assert script.main(["--voc", str(voc), "--root", str(root), "--quiet"]) == 0
    ann = root / "VOCdevkit" / "VOC2012" / "annotations_detectron2"
    for i in ids:
        np.testing.assert_array_equal(
            read(ann / "voc20_val" / f"{i}.png"), expected_from(raws[i], {**t20, 7: 6})
        )
        np.testing.assert_array_equal(
            read(ann / "voc21_val" / f"{i}.png"), expected_from(raws[i], {**t21, 7: 7})
        )
    images = sorted(p.name for p in (root / "VOCdevkit" / "VOC2012" / "JPEGImages").iterdir())
    assert images == [f"{i}.jpg" for i in ids]

    register_all_benchmarks(root)
    for name in ("voc_20_val_sem_seg", "voc_21_val_sem_seg"):
        assert [Path(d["file_name"]).stem for d in DatasetCatalog.get(name)] == ids


# ------------------------------------------------------------------------------ Pascal-Context


def test_pascal_context_prepare_and_load(tmp_path, catalog_restored):
    pc59, pc60 = load_class_names("pascal_context_59"), load_class_names("pascal_context_60")
    # 459-class ids of labels.txt: 2 aeroplane, 284 person, 397 table (= "diningtable"),
    # 458 wood; 1 accordion, 3 air conditioner, 459 wool and 0 are not among the 59.
    t59 = {2: 0, 284: 36, 397: 49, 458: 58}
    assert [pc59[k] for k in t59.values()] == ["aeroplane", "person", "diningtable", "wood"]
    t60 = {k: v + 1 for k, v in t59.items()}
    assert [pc60[k] for k in [0, *t60.values()]] == [
        "background", "aeroplane", "person", "diningtable", "wood",
    ]  # fmt: skip
    values = [*t59, 0, 1, 3, 459]
    voc, context = tmp_path / "VOCdevkit" / "VOC2010", tmp_path / "dl" / "trainval"
    ids = ["2008_000002", "2008_000003"]
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids))
    context.mkdir(parents=True)
    raws = {}
    for n, i in enumerate(ids):
        raws[i] = tile(values, seed=n)
        scipy.io.savemat(context / f"{i}.mat", {"LabelMap": raws[i].astype(np.uint16)})
        write_jpg(voc / "JPEGImages" / f"{i}.jpg", n)
    script = load_prepare_script("prepare_pascal_context")
    argv = ["--context", str(context), "--root", str(tmp_path), "--quiet"]
    assert script.main(argv) == 0
    ann = voc / "annotations_detectron2"
    for i in ids:
        np.testing.assert_array_equal(
            read(ann / "pc59_val" / f"{i}.png"), expected_from(raws[i], t59)
        )
        np.testing.assert_array_equal(
            read(ann / "pc60_val" / f"{i}.png"), expected_from(raws[i], t60, default=0)
        )
    register_all_benchmarks(tmp_path)
    for name in ("pascal_context_59_val_sem_seg", "pascal_context_60_val_sem_seg"):
        assert [Path(d["file_name"]).stem for d in DatasetCatalog.get(name)] == ids

    scipy.io.savemat(context / f"{ids[0]}.mat", {"Other": np.zeros(SIZE, np.uint16)})
    with pytest.raises(ValueError, match=r"2008_000002\.mat.*'LabelMap'"):
        script.main([*argv, "--overwrite"])
