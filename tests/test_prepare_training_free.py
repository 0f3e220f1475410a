"""The benchmarks of the training-free protocol, prepared from tiny fake releases in the official
formats: COCO-Object (datasets/prepare_coco_stuff.py --coco-object), Pascal-Context-459 from the
.mat files and from trainval_merged.json (datasets/prepare_pascal_context.py) and ADE20K-847 from
the full release (datasets/prepare_ade20k_847.py); and the --help of every preparer.

Each expected label is computed here from hand-written (raw id -> class) tables checked against
the class names, or from the published conversion rule written out again, never with the scripts'
own tables.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from detectron2.data import DatasetCatalog
from PIL import Image
from pycocotools import mask as mask_utils
from test_prepare_datasets import REPO, SIZE, load_prepare_script

from pixelclip.data.benchmarks import load_class_names, register_all_benchmarks

IGNORE16 = 65535


def tile(values: list[int], seed: int, size=SIZE) -> np.ndarray:
    """A (H, W) int64 map holding every value of ``values`` (shuffled)."""
    rng = np.random.default_rng(seed)
    flat = np.resize(np.asarray(values, dtype=np.int64), size[0] * size[1])
    return rng.permutation(flat).reshape(size)


def expected_from(raw: np.ndarray, table: dict[int, int], default: int, dtype=np.uint8):
    """Naive per-pixel mapping."""
    out = np.full(raw.shape, default, dtype=dtype)
    for (i, j), v in np.ndenumerate(raw):
        out[i, j] = table.get(int(v), default)
    return out


def write_jpg(path: Path, seed: int = 0, size=SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def read(path: Path, mode: str = "L") -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == mode, (path, img.mode)
        return np.array(img)


# ------------------------------------------------------------------------------ COCO-Object

# COCO category ids without annotations (the COCO-Stuff README).
UNUSED_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}


def groupvit_coco_object(png_value: int) -> int:
    """GroupViT's convert_coco_object.py, written out: PNG value v = COCO id - 1; things (v <= 89)
    -> their rank among the used thing ids, plus 1; stuff (v >= 91) and 255 -> 0 (background).
    The never-used values are ignored here."""
    if png_value == 255 or png_value >= 91:
        return 0
    if png_value + 1 in UNUSED_COCO_IDS:
        return 255
    return sum(1 for i in range(1, png_value + 2) if i not in UNUSED_COCO_IDS)


def test_coco_object_prepare_resume_and_load(tmp_path, catalog_restored, capsys):
    names = load_class_names("coco_object_81")
    assert names == ["background", *load_class_names("coco_stuff_171")[:80]]
    # hand-checked: 0 person, 12 stop sign (id 13), 24 giraffe (id 25), 89 toothbrush;
    # 91 banner and 181 wood are stuff, 255 unlabeled: background; 11 and 90 never used.
    table = {0: 1, 12: 12, 24: 24, 89: 80, 91: 0, 181: 0, 255: 0, 11: 255, 90: 255}
    assert [names[table[v]] for v in (0, 12, 24, 89, 91)] == [
        "person", "stop sign", "giraffe", "toothbrush", "background",
    ]  # fmt: skip
    assert all(groupvit_coco_object(v) == c for v, c in table.items())
    values = list(range(182)) + [255]  # every value the maps can hold
    root, dl = tmp_path / "root", tmp_path / "dl"
    ids = ["000000000139", "000000000285"]
    raws = {}
    for n, i in enumerate(ids):
        raws[i] = tile(values, seed=n, size=(14, 14))
        write_png(dl / "maps" / f"{i}.png", raws[i])
        write_jpg(dl / "val2017" / f"{i}.jpg", n, size=(14, 14))
    script = load_prepare_script("prepare_coco_stuff")
    argv = ["--images", str(dl / "val2017"), "--stuffthingmaps", str(dl / "maps"),
            "--root", str(root), "--quiet", "--coco-object"]  # fmt: skip
    assert script.main(argv) == 0
    captured = capsys.readouterr()
    assert "2 converted, 0 already done" in captured.out
    assert "2 images prepared, the official split has 5000" in captured.err
    full = {v: groupvit_coco_object(v) for v in values}
    ann = root / "coco-stuff" / "annotations_detectron2"
    for i in ids:
        got = read(ann / "coco_object_val2017" / f"{i}.png")
        np.testing.assert_array_equal(got, expected_from(raws[i], full, 255))
        assert (ann / "val2017" / f"{i}.png").is_file()  # the 171-class labels, same pass
    assert script.main([*argv, "--strict"]) == 2  # resumed: nothing converted, count still off
    assert "0 converted, 2 already done" in capsys.readouterr().out

    register_all_benchmarks(root)
    dicts = DatasetCatalog.get("coco_object_81_val_sem_seg")
    assert [Path(d["sem_seg_file_name"]).parent for d in dicts] == [ann / "coco_object_val2017"] * 2


# ------------------------------------------------------------------------------ Pascal-Context

PC_VALUES = [0, 1, 2, 3, 9, 284, 397, 458, 459]  # 0 unlabeled; ids of labels.txt


def pc_tables() -> dict[str, tuple[dict[int, int], int, type]]:
    """Hand-checked (459-class id -> class) tables of the three outputs, with their defaults."""
    pc59, pc459 = load_class_names("pascal_context_59"), load_class_names("pascal_context_459")
    t59 = {2: 0, 9: 1, 284: 36, 397: 49, 458: 58}
    assert [pc59[k] for k in t59.values()] == ["aeroplane", "bag", "person", "diningtable", "wood"]
    t459 = {k: k - 1 for k in PC_VALUES if k}
    assert [pc459[t459[k]] for k in (1, 3, 284, 397, 459)] == [
        "accordion", "air conditioner", "person", "table", "wool",
    ]  # fmt: skip
    return {
        "59": (t59, 255, np.uint8),
        "60": ({k: v + 1 for k, v in t59.items()}, 0, np.uint8),
        "459": (t459, IGNORE16, np.uint16),
    }


def test_context_459_names_agree_with_the_59_table():
    """The 59 classes sit at their labels.txt ids in the 459 list (labels.txt calls one "table")."""
    pc59, pc459 = load_class_names("pascal_context_59"), load_class_names("pascal_context_459")
    script = load_prepare_script("prepare_pascal_context")
    got = [pc459[i - 1] for i in script.CONTEXT59_FULL_IDS]
    assert got == [("table" if n == "diningtable" else n) for n in pc59]
    assert pc459 == sorted(pc459)  # labels.txt is alphabetical


def make_voc(base: Path, ids: list[str]) -> Path:
    voc = base / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids) + "\n")
    for n, i in enumerate(ids):
        write_jpg(voc / "JPEGImages" / f"{i}.jpg", n)
    return voc


def detail_json(path: Path, raws: dict[str, np.ndarray], categories, uncompressed=()) -> None:
    """A PASCAL in Detail file holding ``raws``: one RLE annotation per (image, id), ids of
    ``uncompressed`` as uncompressed RLE (column-major run lengths, computed here)."""
    images, annos = [], []
    for n, (key, raw) in enumerate(raws.items()):
        image_id = int(key[:4] + key[5:])
        images.append({"image_id": image_id, "file_name": f"{key}.jpg", "height": raw.shape[0],
                       "width": raw.shape[1], "phase": "val"})  # fmt: skip
        for cat in sorted({int(v) for v in raw.flat} - {0}, reverse=bool(n % 2)):
            binary = (raw == cat).astype(np.uint8)
            if cat in uncompressed:
                flat = binary.flatten(order="F")
                edges = np.flatnonzero(np.diff(flat)) + 1
                runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
                counts = ([0] if flat[0] else []) + runs.tolist()
                seg = {"size": list(raw.shape), "counts": counts}
            else:
                seg = mask_utils.encode(np.asfortranarray(binary))
                seg["counts"] = seg["counts"].decode("ascii")
            annos.append({"id": len(annos) + 1, "image_id": image_id, "category_id": cat,
                          "segmentation": seg, "parts": []})  # fmt: skip
    cats = [{"category_id": c, "name": f"c{c}", "supercategory": "object"} for c in categories]
    path.write_text(json.dumps({"images": images, "annos_segmentation": annos, "categories": cats}))


def test_context_459_from_mat_and_from_json_are_equal(tmp_path, catalog_restored, capsys):
    tables = pc_tables()
    ids = ["2008_000002", "2008_000003"]
    raws = {i: tile(PC_VALUES, seed=n) for n, i in enumerate(ids)}
    script = load_prepare_script("prepare_pascal_context")
    # .mat route
    mat_root = tmp_path / "mat"
    voc = make_voc(mat_root, ids)
    for i in ids:
        (voc / "trainval").mkdir(exist_ok=True)
        scipy.io.savemat(voc / "trainval" / f"{i}.mat", {"LabelMap": raws[i].astype(np.uint16)})
    assert script.main(["--root", str(mat_root), "--quiet"]) == 0
    ann = voc / "annotations_detectron2"
    for i in ids:
        for out, (table, default, dtype) in tables.items():
            mode = "I;16" if dtype == np.uint16 else "L"
            got = read(ann / f"pc{out}_val" / f"{i}.png", mode)
            np.testing.assert_array_equal(got, expected_from(raws[i], table, default, dtype))
    # JSON route (no .mat folder): the same labels
    json_root = tmp_path / "json"
    voc_json = make_voc(json_root, ids)
    detail_json(voc_json / "trainval_merged.json", raws, range(1, 460), uncompressed={284})
    assert script.main(["--root", str(json_root), "--quiet"]) == 0
    assert "2 converted" in capsys.readouterr().out
    for i in ids:
        for out in tables:
            mode = "I;16" if out == "459" else "L"
            a = read(ann / f"pc{out}_val" / f"{i}.png", mode)
            b = read(voc_json / "annotations_detectron2" / f"pc{out}_val" / f"{i}.png", mode)
            np.testing.assert_array_equal(a, b)

    register_all_benchmarks(mat_root)
    assert [Path(d["file_name"]).stem for d in DatasetCatalog.get("pascal_context_459_val_sem_seg")
            ] == ids  # fmt: skip


def test_context_json_without_the_full_label_set(tmp_path, capsys):
    pc59_ids = load_prepare_script("prepare_pascal_context").CONTEXT59_FULL_IDS
    ids = ["2008_000002", "2008_000003"]
    raws = {i: tile(PC_VALUES, seed=n) for n, i in enumerate(ids)}
    voc = make_voc(tmp_path / "dl", ids)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join([*ids, "2008_009999"]))
    json_path = tmp_path / "trainval_merged.json"
    detail_json(json_path, raws, categories=pc59_ids)  # declares the 59 classes only
    script = load_prepare_script("prepare_pascal_context")
    argv = ["--voc", str(voc), "--json", str(json_path), "--root", str(tmp_path / "r"), "--quiet"]
    with pytest.raises(ValueError, match=r"trainval_merged\.json.*cannot give Context-459"):
        script.main([*argv, "--outputs", "459"])
    split = voc / "ImageSets" / "Main" / "val.txt"
    assert script.main([*argv, "--split-file", str(split)]) == 0  # default: Context-59 and -60
    captured = capsys.readouterr()
    assert "left out: 2008_009999" in captured.err  # listed, but not in the JSON
    ann = tmp_path / "r" / "VOCdevkit" / "VOC2010" / "annotations_detectron2"
    assert sorted(p.name for p in ann.iterdir()) == ["pc59_val", "pc60_val"]
    t59 = pc_tables()["59"][0]
    np.testing.assert_array_equal(read(ann / "pc59_val" / f"{ids[0]}.png"),
                                  expected_from(raws[ids[0]], t59, 255))  # fmt: skip


def test_context_json_overlaps_polygons_and_bad_input(tmp_path):
    """Later annotations win (Detail API getMask); polygons decode; bad RLE names the image."""
    voc = make_voc(tmp_path, ["2008_000002"])
    h, w = SIZE
    top = np.zeros(SIZE, np.uint8)
    top[: h // 2] = 1
    rle_all = mask_utils.encode(np.asfortranarray(np.ones(SIZE, np.uint8)))
    rle_all["counts"] = rle_all["counts"].decode()
    rle_top = mask_utils.encode(np.asfortranarray(top))
    rle_top["counts"] = rle_top["counts"].decode()
    square = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]  # polygon over the top-left corner
    data = {
        "images": [{"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": h,
                    "width": w, "phase": "val"}],
        "annos_segmentation": [
            {"image_id": 2008000002, "category_id": 284, "segmentation": rle_all},
            {"image_id": 2008000002, "category_id": 2, "segmentation": rle_top},
            {"image_id": 2008000002, "category_id": 9, "segmentation": square},
        ],
        "categories": [{"category_id": c} for c in range(1, 460)],
    }  # fmt: skip
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    script = load_prepare_script("prepare_pascal_context")
    argv = ["--root", str(tmp_path), "--quiet", "--outputs", "459"]
    assert script.main(argv) == 0
    expected = np.full(SIZE, 283, np.uint16)  # person everywhere
    expected[: h // 2] = 1  # aeroplane over it
    expected[mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(square, h, w))) > 0] = 8
    assert expected[0, 0] == 8 and (expected == 8).sum() >= 9
    got = read(voc / "annotations_detectron2" / "pc459_val" / "2008_000002.png", "I;16")
    np.testing.assert_array_equal(got, expected)

    data["annos_segmentation"][1]["segmentation"] = {**rle_top, "size": [h + 1, w]}
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"image 2008_000002, annotation 1.*RLE size"):
        script.main([*argv, "--overwrite"])
    del data["annos_segmentation"]
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"trainval_merged\.json: expected a list "):
        script.main([*argv, "--overwrite"])


def test_context_missing_files_and_bad_mat_shape(tmp_path, capsys):
    voc = make_voc(tmp_path, ["2008_000002"])
    script = load_prepare_script("prepare_pascal_context")
    argv = ["--root", str(tmp_path), "--quiet"]
    with pytest.raises(SystemExit) as err:  # neither trainval/ nor trainval_merged.json
        script.main(argv)
    assert err.value.code == 2 and "trainval.tar.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        script.main([*argv, "--json", str(tmp_path / "nowhere.json")])
    assert err.value.code == 2 and "nowhere.json" in capsys.readouterr().err
    (voc / "trainval").mkdir()
    scipy.io.savemat(voc / "trainval" / "2008_000002.mat", {"LabelMap": np.zeros((4, 4, 2))})
    with pytest.raises(ValueError, match=r"2008_000002\.mat: LabelMap must be 2-D"):
        script.main(argv)


def test_context_459_labels_score_with_65535_ignored(tmp_path, catalog_restored):
    """The 16-bit maps go through the project's checked evaluator with ignore 65535."""
    from pixelclip.evaluation.sem_seg import CheckedSemSegEvaluator

    ids = ["2008_000002"]
    raw = tile(PC_VALUES, seed=3)
    voc = make_voc(tmp_path, ids)
    (voc / "trainval").mkdir()
    scipy.io.savemat(voc / "trainval" / f"{ids[0]}.mat", {"LabelMap": raw.astype(np.uint16)})
    script = load_prepare_script("prepare_pascal_context")
    assert script.main(["--root", str(tmp_path), "--quiet", "--outputs", "459"]) == 0
    register_all_benchmarks(tmp_path)
    evaluator = CheckedSemSegEvaluator("pascal_context_459_val_sem_seg", distributed=False)
    evaluator.reset()
    target = np.where(raw == 0, 5, raw - 1)  # right where labelled, class 5 where unlabeled
    logits = torch.nn.functional.one_hot(torch.from_numpy(target), 459).permute(2, 0, 1).float()
    image = str(voc / "JPEGImages" / f"{ids[0]}.jpg")
    evaluator.process([{"file_name": image}], [{"sem_seg": logits}])
    result = evaluator.evaluate()["sem_seg"]
    assert result["mIoU"] == pytest.approx(100.0)  # class 5 at ignored pixels is not counted
    assert load_class_names("pascal_context_459")[5] == "ashtray"
    assert np.isnan(result["IoU-ashtray"])  # neither labelled nor predicted where labelled


# ------------------------------------------------------------------------------ ADE20K-847

# ADE class index -> benchmark index, hand-checked against MaskFormer's category list; 0 is
# unlabeled and 5 a class outside the 847.
ADE_TABLE = {2978: 0, 312: 1, 1857: 255, 2315: 256, 3148: 846}
ADE_VALUES = [*ADE_TABLE, 0, 5]


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (not) loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def encode_ade(classes: np.ndarray, seed: int) -> np.ndarray:
    """The release's RGB encoding: R // 10 * 256 + G is the class, B an instance id."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((*classes.shape, 3), np.uint8)
    rgb[..., 0] = (classes // 256) * 10 + rng.integers(0, 10, classes.shape)  # R keeps // 10
    rgb[..., 1] = classes % 256
    rgb[..., 2] = rng.integers(0, 256, classes.shape)
    return rgb


def nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize, sampling source pixel floor(i * src / dst) (OpenCV's rule)."""
    rows = np.minimum((np.arange(size[0]) * label.shape[0] / size[0]).astype(int),
                      label.shape[0] - 1)  # fmt: skip
    cols = np.minimum((np.arange(size[1]) * label.shape[1] / size[1]).astype(int),
                      label.shape[1] - 1)  # fmt: skip
    return label[rows][:, cols]


def make_ade_release(base: Path) -> dict[str, np.ndarray]:
    """Two validation images in scene folders (20x30: resized with a cap of 16; 10x12: kept) and
    one training image; a malicious index pickle that must never be loaded."""
    release = base / "ADE20K_2021_17_01"
    classes = {}
    for n, (stem, folder, size) in enumerate([
        ("ADE_val_00000001", "cultural/apse_indoor", (20, 30)),
        ("ADE_val_00000002", "urban/street", (10, 12)),
    ]):  # fmt: skip
        classes[stem] = tile(ADE_VALUES, seed=n, size=size)
        folder_path = release / "images" / "ADE" / "validation" / folder
        write_jpg(folder_path / f"{stem}.jpg", n, size=size)
        Image.fromarray(encode_ade(classes[stem], n)).save(folder_path / f"{stem}_seg.png")
    train = release / "images" / "ADE" / "training" / "urban" / "street"
    write_jpg(train / "ADE_train_00000001.jpg", size=(8, 8))
    Image.fromarray(encode_ade(np.zeros((8, 8), int), 0)).save(train / "ADE_train_00000001_seg.png")
    (release / "index_ade20k.pkl").write_bytes(pickle.dumps(_Marker(base / "UNPICKLED")))
    return classes


def test_ade847_prepare_resize_resume_and_load(tmp_path, catalog_restored, capsys):
    names = load_class_names("ade20k_847")
    assert [names[k] for k in ADE_TABLE.values()] == [
        "wall", "building, edifice", "pier", "shanties", "adding machine, totalizer, totaliser",
    ]  # fmt: skip
    classes = make_ade_release(tmp_path / "dl")
    script = load_prepare_script("prepare_ade20k_847")
    root = tmp_path / "root"
    argv = ["--release", str(tmp_path / "dl" / "ADE20K_2021_17_01"), "--root", str(root),
            "--quiet", "--max-short-side", "16"]  # fmt: skip
    assert script.main(argv) == 0
    captured = capsys.readouterr()
    assert "2 converted" in captured.out and "official split has 2000" in captured.err
    out = root / "ADE20K_2021_17_01"
    sizes = {"ADE_val_00000001": (16, 24), "ADE_val_00000002": (10, 12)}  # 16 x round(30*16/20)
    for stem, size in sizes.items():
        mapped = expected_from(classes[stem], ADE_TABLE, IGNORE16, np.uint16)
        got = read(out / "annotations_detectron2" / "validation" / f"{stem}.png", "I;16")
        np.testing.assert_array_equal(got, nearest(mapped, size))
        with Image.open(out / "images_detectron2" / "validation" / f"{stem}.jpg") as img:
            assert (img.height, img.width) == size
    src = tmp_path / "dl" / "ADE20K_2021_17_01" / "images" / "ADE" / "validation" / "urban"
    assert os.path.samefile(out / "images_detectron2" / "validation" / "ADE_val_00000002.jpg",
                            src / "street" / "ADE_val_00000002.jpg")  # fmt: skip
    assert not (tmp_path / "dl" / "UNPICKLED").exists()  # the index pickle was not loaded
    assert script.main([*argv, "--strict"]) == 2  # resume: nothing to do, count check fails
    assert "0 converted, 2 already done" in capsys.readouterr().out

    register_all_benchmarks(root)
    dicts = DatasetCatalog.get("ade20k_847_val_sem_seg")
    assert [Path(d["file_name"]).name for d in dicts] == [f"{s}.jpg" for s in sizes]


def test_ade847_bad_input_is_a_clear_error(tmp_path, capsys):
    make_ade_release(tmp_path)
    release = tmp_path / "ADE20K_2021_17_01"
    script = load_prepare_script("prepare_ade20k_847")
    argv = ["--root", str(tmp_path), "--quiet", "--max-short-side", "0"]
    folder = release / "images" / "ADE" / "validation"
    seg = folder / "urban" / "street" / "ADE_val_00000002_seg.png"
    os.remove(seg)  # an image without its class map: left out and reported
    assert script.main(argv) == 0
    assert "left out: ADE_val_00000002" in capsys.readouterr().err
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(seg)  # grayscale, not the RGB encoding
    with pytest.raises(ValueError, match=r"ADE_val_00000002_seg\.png.*mode RGB.*'L'"):
        script.main(argv)
    Image.fromarray(np.zeros((11, 12, 3), np.uint8)).save(seg)  # not the image's size
    with pytest.raises(ValueError, match=r"ADE_val_00000002_seg\.png: class map is 11x12.*10x12"):
        script.main(argv)
    with pytest.raises(SystemExit) as err:
        script.main(["--root", str(tmp_path / "nothing"), "--quiet"])
    assert err.value.code == 2 and "images/ADE/validation" in capsys.readouterr().err


# ------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("path", sorted((REPO / "datasets").glob("prepare_*.py")), ids=str)
def test_prepare_help_describes_every_option_and_its_default(path, capsys):
    script = load_prepare_script(path.stem)
    with pytest.raises(SystemExit) as err:
        script.main(["--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    options = text.split("\noptions:\n", 1)[1]
    # one entry per option: "  --name ..." up to the next option line
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    assert len(entries) >= 7, entries  # -h plus at least the six shared options
    for entry in entries:
        flat = " ".join(entry.split())
        if flat.startswith("-h, --help"):
            continue
        _, _, text_after = entry.strip().partition("  ")  # after "--name METAVAR"
        described = re.sub(r"\(default: [^)]*\)", "", text_after).strip()
        assert described, f"{path.name}: no help for {flat}"
        assert "(default: " in flat, f"{path.name}: no default shown for {flat}"
        assert "(default: None)" not in flat, f"{path.name}: {flat}"
        assert flat.count("(default: ") == 1, f"{path.name}: default given twice in {flat}"
