"""Label maps are validated before they are scored: values in 0..C-1 or the
ignore label, the image's size, one channel; otherwise an error naming the file, through the
evaluator that ``train_net --eval-only`` and ``tools/evaluate_all.py`` build
(``Trainer.build_evaluator``), never wrong metrics."""

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import build_model
from PIL import Image
from test_meta_arch import tiny_cfg

from pixelclip.data.benchmarks import register_sem_seg_dataset
from pixelclip.engine.trainer import Trainer

NAME = "labelcheck_tiny_val_sem_seg"
CLASSES = ["cat", "sky", "road"]
SIZE = (16, 24)  # (h, w) of every generated image


def _labels(h=SIZE[0], w=SIZE[1]):
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 2 :] = 1
    labels[h // 2 :, : w // 3] = 2
    labels[0] = 255  # ignore
    return labels


@pytest.fixture
def dataset(tmp_path):
    """Two valid (image, label) pairs a and b; yields the folder, unregisters afterwards."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for stem in "ab":
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(_labels()).save(tmp_path / "labels" / f"{stem}.png")
    register_sem_seg_dataset(
        NAME, tmp_path / "images", tmp_path / "labels", CLASSES, image_ext=".png", replace=True
    )
    yield tmp_path
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _run(evaluator, seed=0):
    """reset / process / evaluate with random score maps of the images' size."""
    g = torch.Generator().manual_seed(seed)
    evaluator.reset()
    for d in DatasetCatalog.get(NAME):
        h, w = Image.open(d["file_name"]).size[::-1]
        scores = torch.rand(len(CLASSES), h, w, generator=g)
        evaluator.process([{"file_name": d["file_name"], "height": h, "width": w}],
                          [{"sem_seg": scores}])  # fmt: skip
    return evaluator.evaluate()


def _evaluator(tmp_path):
    return Trainer.build_evaluator(tiny_cfg(), NAME, str(tmp_path / "eval"))


def test_valid_label_maps_score_exactly_as_detectron2(dataset, tmp_path):
    checked = _evaluator(tmp_path)
    assert type(checked).__name__ == "CheckedSemSegEvaluator"
    plain = SemSegEvaluator(NAME, distributed=False, output_dir=None)
    assert _run(checked) == _run(plain)


def _save(path, array):
    Image.fromarray(array).save(path)  # uint8 (H, W): mode L; uint16: I;16; (H, W, 3): RGB


BAD_LABELS = {
    # detectron2 would count the value C (here 3) as "ignore" without a word.
    "one_past_the_last_class": (
        lambda p: _save(p, np.where(_labels() == 2, 3, _labels()).astype(np.uint8)),
        r"b\.png: label value\(s\) 3 in \d+ pixels; dataset '.*' has 3 classes, so expected "
        r"0\.\.2 or the ignore label 255",
    ),
    "far_out_of_range": (
        lambda p: _save(p, np.where(_labels() == 1, 200, _labels()).astype(np.uint8)),
        r"b\.png: label value\(s\) 200 in",
    ),
    "sixteen_bit": (  # a 16-bit PNG: single channel, but values up to 65535
        lambda p: _save(p, np.where(_labels() < 3, _labels() * 300, 255).astype(np.uint16)),
        r"b\.png: label value\(s\) 300, 600 in",
    ),
    "rgb": (
        lambda p: _save(p, np.repeat(_labels()[..., None], 3, axis=2)),
        r"b\.png: label map has PIL mode RGB \(3 channels\); expected a single-channel image",
    ),
    "other_size": (
        lambda p: _save(p, _labels(SIZE[1], SIZE[0])),
        rf"b\.png: label map is {SIZE[1]}x{SIZE[0]} \(h x w\), but its image .*b\.png is "
        rf"{SIZE[0]}x{SIZE[1]}; expected the same size",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_label_maps_are_refused_naming_the_file(dataset, tmp_path, case):
    write, message = BAD_LABELS[case]
    write(dataset / "labels" / "b.png")
    with pytest.raises(ValueError, match=message):
        _run(_evaluator(tmp_path))


@pytest.mark.timeout(20)
def test_a_fifo_label_map_is_refused_without_opening_it(dataset, tmp_path):
    os.remove(dataset / "labels" / "b.png")
    os.mkfifo(dataset / "labels" / "b.png")
    dicts = [
        {"file_name": str(dataset / "images" / f"{s}.png"),
         "sem_seg_file_name": str(dataset / "labels" / f"{s}.png")}
        for s in "ab"
    ]  # fmt: skip
    DatasetCatalog.remove(NAME)  # a hand-made registration: the listing would leave it out
    DatasetCatalog.register(NAME, lambda: dicts)
    with pytest.raises(ValueError, match=r"b\.png: label map is a FIFO, not a regular file"):
        _run(_evaluator(tmp_path))


@pytest.mark.parametrize(
    "case, message",
    [
        ("other_size", r"b\.png: label map is 24x16 \(h x w\), but its image"),
        ("one_past_the_last_class", r"b\.png: label value\(s\) 3 in"),
    ],
)
def test_evaluation_entry_point_reports_the_label_file(dataset, tmp_path, case, message):
    """Through pixelclip.evaluation.evaluate (tools/evaluate_all.py; train_net --eval-only uses
    the same Trainer.build_evaluator): with a test-time resize, detectron2's mapper would stop on
    a label of another size with "Input size mismatch" and no file name."""
    from pixelclip.evaluation.evaluate import evaluate

    BAD_LABELS[case][0](dataset / "labels" / "b.png")
    cfg = tiny_cfg(**{"DATALOADER.NUM_WORKERS": 0, "INPUT.MIN_SIZE_TEST": 32,
                      "INPUT.MAX_SIZE_TEST": 64, "OUTPUT_DIR": str(tmp_path)})  # fmt: skip
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match=message):
        evaluate(cfg, model, [NAME])
