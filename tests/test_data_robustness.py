"""Training data that cannot hang or exhaust memory: the SA-1B listing takes
regular files only, every malformed sample is a logged skip naming its file, a dataset without a
usable sample stops with one summary error, and non-UTF-8 file names never break listing or
logging."""

import io
import json
import logging
import os
import re
import zlib

import data_factory
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from pixelclip.config import add_pixelclip_config
from pixelclip.data import sa1b
from pixelclip.data.mapper import BadSampleError, SA1BDatasetMapper, TrainingDataError
from pixelclip.data.masks import max_rle_chars
from pixelclip.engine.resume import build_resumable_train_loader

KEYS = ("file_name", "annotation_file", "image_id")
H, W = 32, 48  # size of the generated samples


def _dict(sample):
    return {k: sample[k] for k in KEYS}


def _mapper(**kwargs):
    return SA1BDatasetMapper(augmentations=[], mask_resolution=8, **kwargs)


class _StrictUTF8Handler(logging.StreamHandler):
    """A handler writing to a strict UTF-8 stream (like a log file) that raises instead of
    printing "--- Logging error ---" when a message cannot be encoded."""

    def __init__(self):
        super().__init__(io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict"))

    def handleError(self, record):
        raise  # noqa: PLE0704 -- called inside the handler's except block

    def text(self) -> str:
        self.stream.flush()
        return self.stream.buffer.getvalue().decode("utf-8")


@pytest.fixture
def strict_log():
    handler = _StrictUTF8Handler()
    logger = logging.getLogger("pixelclip")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# ------------------------------------------------------------------ a. regular files only
@pytest.mark.timeout(20)
def test_listing_takes_regular_files_only(tmp_path, caplog):
    root = tmp_path / "sa1b"
    data_factory.write_sample(root / "sa_000000", "sa_1", H, W)
    shard = root / "sa_000000"
    os.mkfifo(shard / "sa_2.jpg")  # reading it would block until a writer appears
    os.symlink(tmp_path / "nowhere.jpg", shard / "sa_3.jpg")  # dangling
    data_factory.write_sample(shard / "sa_4.jpg", "sa_5", H, W)  # a folder named like an image
    os.symlink("/dev/zero", shard / "sa_6.jpg")  # a device: endless zeros
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.sa1b"):
        listed = sa1b.list_sa1b_images(root)
    assert listed == ["sa_000000/sa_1.jpg", "sa_000000/sa_4.jpg/sa_5.jpg"]
    warnings = [r for r in caplog.records if "not regular files" in r.getMessage()]
    assert len(warnings) == 1  # once per listing, with the count and the first names
    assert "skipped 4 entries" in warnings[0].getMessage()
    assert "sa_000000/sa_2.jpg" in warnings[0].getMessage()
    # The image-folder listing (DINO masks) uses the same scan.
    files = [d["file_name"] for d in sa1b.load_image_folder_dicts(root)]
    assert files == [str(shard / "sa_1.jpg"), str(shard / "sa_4.jpg" / "sa_5.jpg")]
    # Every listed sample maps, nothing blocks.
    mapper = _mapper()
    assert all(mapper(d) is not None for d in sa1b.load_sa1b_dicts(root))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("which", ["image", "annotation_file"])
def test_mapper_never_opens_a_fifo(tmp_path, caplog, which):
    s = data_factory.write_sample(tmp_path, "sa_1", H, W)
    d = _dict(s)
    if which == "image":  # e.g. a subset-list path, which is used without listing
        d["file_name"] = str(tmp_path / "sa_7.jpg")
        os.mkfifo(d["file_name"])
    else:
        os.remove(d["annotation_file"])
        os.mkfifo(d["annotation_file"])
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper()(d) is None
    assert os.path.basename(d["file_name" if which == "image" else which]) in caplog.text
    assert "a FIFO, not a regular file" in caplog.text


@pytest.mark.timeout(20)
def test_benchmark_listing_leaves_out_fifo_labels(tmp_path, caplog):
    from pixelclip.data.benchmarks import load_sem_seg_files

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / f"{stem}.jpg")
    Image.new("L", (4, 4)).save(tmp_path / "labels" / "a.png")
    os.mkfifo(tmp_path / "labels" / "b.png")
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.benchmarks"):
        dicts = load_sem_seg_files(str(tmp_path / "images"), str(tmp_path / "labels"))
    assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == ["a.png"]
    assert "1 entries named like label files are not regular files" in caplog.text


# ------------------------------------------------------------------ b. malformed samples
def _set_size(value):
    def edit(record):
        record["annotations"][1]["segmentation"]["size"] = value

    return edit


def _set_image(key, value):
    def edit(record):
        record["image"][key] = value

    return edit


def _set_counts(value):
    def edit(record):
        record["annotations"][1]["segmentation"]["counts"] = value

    return edit


SIZE_REASON = "annotation 1 has size {}; expected [h, w], two positive integers"
MALFORMED = {
    "size_string": (_set_size(["a", W]), SIZE_REASON.format(f"['a', {W}]")),
    "size_negative": (_set_size([-H, W]), SIZE_REASON.format(f"[-{H}, {W}]")),
    "size_fraction": (_set_size([H + 0.5, W]), SIZE_REASON.format(f"[{H + 0.5}, {W}]")),
    "size_nan": (_set_size([float("nan"), W]), SIZE_REASON.format(f"[nan, {W}]")),
    "size_huge": (_set_size([10**40, W]), SIZE_REASON.format(f"[{10**40}, {W}]")),
    "size_bool": (_set_size([True, W]), SIZE_REASON.format(f"[True, {W}]")),
    "height_string": (_set_image("height", "a"), "'image' has height 'a' and width 48"),
    "height_nan": (_set_image("height", float("nan")), "'image' has height nan"),
    "height_infinite": (_set_image("height", float("inf")), "'image' has height inf"),
    "height_null": (_set_image("height", None), "'image' has height None"),
    "counts_int": (_set_counts(5), "counts is a int; expected a string (compressed RLE) or a"),
    "counts_null": (_set_counts(None), "counts is a NoneType; expected a string"),
    "counts_object": (_set_counts({"a": 1}), "counts is a dict; expected a string"),
    # Would decode after a silent cast to int64 (1, 1535).
    "counts_floats": (_set_counts([1.5, H * W - 0.5]), "counts are not a flat list of integers"),
    "counts_bools": (_set_counts([True] * (H * W)), "counts are not a flat list of integers"),
    "counts_nan": (_set_counts([float("nan"), H * W]), "counts are not a flat list of integers"),
    "counts_nested": (_set_counts([[1, 2], [3]]), "counts are not a flat list of integers"),
    "counts_list_too_long": (
        _set_counts([1] * (H * W + 2)),
        f"counts has {H * W + 2} runs, but a {H}x{W} mask has at most {H * W + 1}",
    ),
    "counts_string_too_long": (
        _set_counts("1" * (max_rle_chars(H, W) + 1)),
        f"counts string has {max_rle_chars(H, W) + 1} characters, but a compressed RLE of a "
        f"{H}x{W} mask needs at most {max_rle_chars(H, W)}",
    ),
    "counts_lone_surrogate": (_set_counts("\ud800"), "non-ASCII characters"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_json_numbers_are_logged_skips(tmp_path, caplog, case):
    edit, reason = MALFORMED[case]
    s = data_factory.write_sample(tmp_path, "sa_9", H, W)
    record = json.load(open(s["annotation_file"]))
    edit(record)
    with open(s["annotation_file"], "w") as f:
        json.dump(record, f)  # NaN / Infinity / lone surrogates as Python's json writes them
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper()(_dict(s)) is None
    assert "sa_9.json" in caplog.text and reason in caplog.text
    with pytest.raises(BadSampleError, match=r"sa_9\.json"):
        _mapper(skip_bad_samples=False)(_dict(s))


def test_rle_length_bound_is_what_the_largest_masks_need():
    """The bound holds for the worst masks pycocotools can write: a checkerboard (h * w runs of
    one pixel) and one pixel in a corner (one run of h * w - 1)."""
    from pycocotools import mask as mask_utils

    for h, w in ((1, 1), (3, 5), (31, 33), (64, 64)):
        board = np.indices((h, w)).sum(0) % 2 == 0
        corner = np.zeros((h, w), bool)
        corner[-1, -1] = True
        for mask in (board, ~board, corner, ~corner):
            counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
            assert len(counts) <= max_rle_chars(h, w)


def test_deeply_nested_json_is_a_logged_skip(tmp_path, caplog):
    s = data_factory.write_sample(tmp_path, "sa_9", H, W)
    with open(s["annotation_file"], "w") as f:  # json.load raises RecursionError on it
        f.write('{"annotations": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper()(_dict(s)) is None
    assert "sa_9.json: cannot read the annotation JSON (maximum recursion depth" in caplog.text


def test_oversized_json_is_refused_before_parsing(tmp_path, caplog, monkeypatch):
    s = data_factory.write_sample(tmp_path, "sa_9", H, W)
    size = os.path.getsize(s["annotation_file"])
    monkeypatch.setattr(sa1b, "MAX_ANNOTATION_BYTES", size - 1)
    monkeypatch.setattr(json, "load", lambda *a, **k: pytest.fail("the JSON was parsed"))
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper()(_dict(s)) is None
    assert f"sa_9.json: annotation file has {size} bytes, more than the {size - 1}" in caplog.text


def test_annotation_folder_is_a_logged_skip(tmp_path, caplog):
    s = data_factory.write_sample(tmp_path, "sa_9", H, W)
    os.remove(s["annotation_file"])
    os.mkdir(s["annotation_file"])
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper()(_dict(s)) is None
    assert "sa_9.json: annotation file is a folder, not a regular file" in caplog.text


def _png_claiming(path, width, height):
    """A small valid PNG whose header claims width x height (IHDR patched, CRC recomputed)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def _jpeg_claiming(path, width, height):
    """A small valid JPEG whose baseline frame header (SOF0) claims width x height."""
    Image.new("RGB", (8, 8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "make, width, height, reason",
    [
        # Over PIL's own bomb limit (2 x 89.5 MP): PIL refuses in Image.open, with its own error.
        (_png_claiming, 30_000, 30_000, "decompression-bomb limit"),
        # Between PIL's warning and error thresholds: PIL would decode ~270 MB; we refuse it.
        (_jpeg_claiming, 10_000, 9_000, "10000x9000 = 90000000 pixels, more than the maximum"),
    ],
    ids=["png_bomb", "jpeg_over_limit"],
)
def test_oversized_images_are_refused_from_the_header(
    tmp_path, caplog, monkeypatch, make, width, height, reason
):
    s = data_factory.write_sample(tmp_path, "sa_9", H, W)
    image = tmp_path / ("big.png" if make is _png_claiming else "big.jpg")
    make(image, width, height)
    d = dict(_dict(s), file_name=str(image))
    from pixelclip.data import mapper as mapper_module

    def no_decoding(*args, **kwargs):
        pytest.fail("the oversized image was decoded")

    monkeypatch.setattr(mapper_module.utils, "read_image", no_decoding)
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper()(d) is None
    assert image.name in caplog.text and reason in caplog.text
    assert "refused before decoding" in caplog.text


def test_pixel_limit_is_a_mapper_argument(tmp_path, caplog):
    s = data_factory.write_sample(tmp_path, "sa_9", H, W)
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert _mapper(max_image_pixels=H * W - 1)(_dict(s)) is None
        assert _mapper(max_image_pixels=H * W)(_dict(s)) is not None
    assert f"more than the maximum of {H * W - 1} (max_image_pixels)" in caplog.text


# ------------------------------------------------------------------ non-UTF-8 file names
@pytest.mark.timeout(20)
def test_non_utf8_file_names_list_map_and_log(tmp_path, strict_log):
    root = tmp_path / "sa1b"
    data_factory.write_sample(root, "good", H, W)
    data_factory.write_sample(root, "bad", H, W)
    broot = os.fsencode(root)
    for old, new in ((b"good.jpg", b"sa_\xff.jpg"), (b"good.json", b"sa_\xff.json"),
                     (b"bad.jpg", b"sa_\xfe.jpg")):  # fmt: skip
        os.rename(os.path.join(broot, old), os.path.join(broot, new))
    os.remove(os.path.join(broot, b"bad.json"))  # sa_\xfe.jpg: a bad sample
    os.mkfifo(os.path.join(broot, b"sa_\xfd.jpg"))  # left out by the listing, with a warning
    dicts = sa1b.load_sa1b_dicts(root)
    assert [d["image_id"] for d in dicts] == [os.fsdecode(b"sa_\xfe"), os.fsdecode(b"sa_\xff")]
    mapper = _mapper()
    assert mapper(dicts[0]) is None and mapper(dicts[1]) is not None
    text = strict_log.text()
    assert "sa_\\xfd.jpg" in text  # the listing's warning
    assert "sa_\\xfe.json: annotation file not found" in text  # the mapper's skip


# ------------------------------------------------------------------ c. giving up
def _train_cfg(name):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 2 * W
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.STRONG_AUG.ENABLED = False
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = 8
    cfg.SEED = 0
    return cfg


@pytest.fixture
def registered(tmp_path):
    """Register an SA-1B folder of three samples; yields (dataset name, samples)."""
    name = "robustness_sa1b_train"
    samples = data_factory.write_sa1b_folder(tmp_path / "sa1b", {"sa_000000": 3}, H, W)
    sa1b.register_sa1b(name, root=tmp_path / "sa1b")
    yield name, samples
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _loader(name):
    cfg = _train_cfg(name)
    return build_resumable_train_loader(cfg, SA1BDatasetMapper(cfg, is_train=True))


@pytest.mark.timeout(60)
def test_every_sample_bad_stops_with_one_summary(registered):
    """Through the project's training loader (its seeded replacement draws may repeat a sample),
    in the main process (DATALOADER.NUM_WORKERS 0). A data-loader worker raises the same error,
    which torch re-raises in the main process with its text; that is not tested here because
    torch then needs 5 s to shut the failed worker down."""
    name, samples = registered
    for s in samples[:2]:
        with open(s["annotation_file"], "w") as f:
            f.write('{"annotations": [')
    # Two bad samples of three: skipped and replaced, training goes on.
    batches = iter(_loader(name))
    for _ in range(10):
        assert all(x["image_id"] == "sa_3" for x in next(batches))
    del batches
    os.remove(samples[2]["annotation_file"])
    # All three bad: one summary as soon as each has failed, not an endless retry.
    with pytest.raises(TrainingDataError) as info:
        next(iter(_loader(name)))
    message = str(info.value)
    tried = re.search(
        r"(\d+) samples tried in a row had no usable mask \((\d+) bad, 0 without", message
    )
    assert tried and tried[1] == tried[2] and 3 <= int(tried[1]) < 100
    assert "; all 3 samples of the dataset are bad" in message
    for n in (1, 2):
        assert f"sa_{n}.json: cannot read the annotation JSON" in message
    assert "sa_3.json: annotation file not found" in message
    assert message.count("sa_1.json") == 1  # each reason once


def test_detectron2_map_dataset_gets_the_summary_before_its_pool_runs_out(registered):
    """detectron2's own MapDataset (a shrinking pool) meets the summary, not "Sample larger than
    population"."""
    from detectron2.data.common import DatasetFromList, MapDataset

    name, samples = registered
    for s in samples:
        os.remove(s["annotation_file"])
    dataset = MapDataset(
        DatasetFromList(DatasetCatalog.get(name), copy=False),
        SA1BDatasetMapper(_train_cfg(name), is_train=True),
    )
    with pytest.raises(TrainingDataError, match="3 samples tried in a row.*all 3 samples of"):
        dataset[0]


@pytest.mark.timeout(60)
def test_no_usable_mask_anywhere_stops_with_one_summary(registered):
    name, samples = registered
    for s in samples:  # annotations exist, but every mask is empty
        record = json.load(open(s["annotation_file"]))
        empty = data_factory.encode(np.zeros((2, H, W), bool))
        record["annotations"] = [{"id": i, "segmentation": seg} for i, seg in enumerate(empty)]
        with open(s["annotation_file"], "w") as f:
            json.dump(record, f)
    batches = iter(_loader(name))
    with pytest.raises(TrainingDataError) as info:
        for _ in range(60):  # 120 samples: more than the default limit of 100
            next(batches)
    message = str(info.value)
    assert "100 samples tried in a row had no usable mask (0 bad, 100 without a mask" in message
    assert "give_up_after=100" in message and "sa_1.json: no mask left on the 8x8 grid" in message


def test_streak_is_reset_by_a_usable_sample(tmp_path):
    good = _dict(data_factory.write_sample(tmp_path, "sa_1", H, W))
    bad = dict(good, annotation_file=str(tmp_path / "missing.json"))
    mapper = _mapper(give_up_after=3, dataset_size=10)
    for _ in range(5):
        assert mapper(bad) is None and mapper(bad) is None
        assert mapper(good) is not None
    assert mapper(bad) is None and mapper(bad) is None
    with pytest.raises(TrainingDataError, match="3 samples tried in a row.*give_up_after=3"):
        mapper(bad)
    # A dataset of two: once both have failed, no replacement can succeed.
    other = dict(bad, file_name=str(tmp_path / "sa_2.jpg"))
    small = _mapper(dataset_size=2)
    assert small(bad) is None and small(bad) is None  # the same sample twice: one of two
    with pytest.raises(TrainingDataError, match="3 samples tried in a row.*all 2 samples of"):
        small(other)
