"""SA1BDatasetMapper on generated SA-1B-format files: contract, geometry, cutout, bad input."""

import json
import logging
from pathlib import Path

import data_factory
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.detection_utils import read_image

from pixelclip.config import add_pixelclip_config
from pixelclip.data.augment import StrongAugmentation
from pixelclip.data.mapper import BadSampleError, SA1BDatasetMapper

REPO = Path(__file__).resolve().parents[1]
FILL = (11, 22, 33)
KEYS = ("file_name", "annotation_file", "image_id")


def _dict(sample):
    return {k: sample[k] for k in KEYS}


def _expected_masks(masks, transforms, frame, grid):
    """Independent path: every full mask through detectron2, padded, PyTorch nearest."""
    out = []
    for m in masks:
        m = transforms.apply_segmentation(m.astype(np.uint8))
        padded = np.zeros(frame, np.uint8)
        padded[: m.shape[0], : m.shape[1]] = m
        out.append(F.interpolate(torch.from_numpy(padded)[None, None].float(), (grid, grid))[0, 0])
    return torch.stack(out).bool()


def _largest_first(masks):
    areas = masks.sum(dim=(1, 2))
    order = sorted(range(len(masks)), key=lambda i: -int(areas[i]))  # stable on ties
    return masks[[i for i in order if areas[i] > 0]]


def _cutout_only(scale=(0.2, 0.4)):
    return StrongAugmentation(
        color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, cutout_scale=scale, fill=FILL
    )


FIXED = [T.ResizeTransform(48, 64, 72, 96), T.CropTransform(20, 10, 40, 40), T.HFlipTransform(40)]


@pytest.fixture
def sample(tmp_path):
    return data_factory.write_sample(tmp_path / "sa_000000", "sa_1", 48, 64, num_masks=8)


def test_weak_view_and_masks_follow_the_geometry(sample):
    mapper = SA1BDatasetMapper(augmentations=FIXED, mask_resolution=16, pad_size=(40, 40))
    out = mapper(_dict(sample))
    tfm = T.TransformList(FIXED)
    image = read_image(sample["file_name"], format="RGB")
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), tfm.apply_image(image))
    assert out["image_strong"] is out["image"]  # no strong augmentation configured
    expected = _largest_first(_expected_masks(sample["masks"], tfm, (40, 40), 16))
    assert out["masks"].dtype == torch.bool and out["masks"].shape == expected.shape
    assert torch.equal(out["masks"], expected)
    assert out["valid"].dtype == torch.bool and bool(out["valid"].all())
    assert (out["height"], out["width"], out["image_id"]) == (48, 64, "sa_1")


def test_cutout_is_removed_from_masks_and_filled_in_the_strong_view(sample):
    np.random.seed(3)
    mapper = SA1BDatasetMapper(
        augmentations=FIXED, mask_resolution=20, strong_augmentation=_cutout_only()
    )
    out = mapper(_dict(sample))
    strong, weak = out["image_strong"], out["image"]
    changed = (strong != weak).any(dim=0)
    filled = (strong == torch.tensor(FILL)[:, None, None]).all(dim=0)
    ys, xs = torch.nonzero(filled, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    assert bool(filled[y0:y1, x0:x1].all()) and not bool(changed[~filled].any())
    assert 0.2 * 40 - 1 <= y1 - y0 <= 0.4 * 40 + 1 and 0.2 * 40 - 1 <= x1 - x0 <= 0.4 * 40 + 1
    # valid on the 20x20 grid: False exactly where the nearest source pixel (floor(2 i)) is cut.
    src = torch.arange(20) * 2
    in_box = ((src >= y0) & (src < y1))[:, None] & ((src >= x0) & (src < x1))[None, :]
    assert torch.equal(out["valid"], ~in_box)
    full = _expected_masks(sample["masks"], T.TransformList(FIXED), (40, 40), 20)
    assert torch.equal(out["masks"], _largest_first(full & ~in_box))


def test_cap_keeps_the_largest_masks(sample):
    mapper = SA1BDatasetMapper(augmentations=FIXED, mask_resolution=16, max_masks=3)
    out = mapper(_dict(sample))
    expected = _largest_first(
        _expected_masks(sample["masks"], T.TransformList(FIXED), (40, 40), 16)
    )
    assert len(expected) > 3
    assert torch.equal(out["masks"], expected[:3])
    areas = out["masks"].sum(dim=(1, 2))
    assert bool((areas[:-1] >= areas[1:]).all())


def test_small_image_is_padded_and_padding_is_invalid(tmp_path):
    s = data_factory.write_sample(tmp_path, "sa_2", 20, 80, num_masks=5)
    augs = [T.ResizeShortestEdge(32, max_size=40), T.RandomCrop("absolute", (48, 48))]
    mapper = SA1BDatasetMapper(
        augmentations=augs, mask_resolution=24, pad_size=(48, 48), pad_value=FILL
    )
    out = mapper(_dict(s))
    # 20x80 -> shortest edge 32 would make the long edge 128 > 40, so 10x40; crop = whole image.
    assert out["image"].shape == (3, 48, 48)
    assert bool((out["image"][:, 10:, :] == torch.tensor(FILL)[:, None, None]).all())
    assert bool((out["image"][:, :, 40:] == torch.tensor(FILL)[:, None, None]).all())
    rows = torch.arange(24) * 2
    assert torch.equal(out["valid"], (rows < 10)[:, None] & (rows < 40)[None, :])
    resize = T.TransformList([T.ResizeTransform(20, 80, 10, 40)])
    assert torch.equal(
        out["masks"], _largest_first(_expected_masks(s["masks"], resize, (48, 48), 24))
    )


def _cfg(**input_overrides):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "Base-PixelCLIP.yaml"))
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.CROP.SIZE = (64, 64)
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = 32
    for key, value in input_overrides.items():
        cfg.INPUT[key] = value
    return cfg


def test_from_config_builds_the_reference_pipeline(sample):
    cfg = _cfg(MAX_MASKS_PER_IMAGE=2)
    mapper = SA1BDatasetMapper(cfg)
    names = [type(a).__name__ for a in mapper.augmentations.augs]
    assert names == ["ResizeShortestEdge", "RandomCrop", "RandomColorAugSSD", "RandomFlip"]
    assert mapper.pad_size == (64, 64) and mapper.pad_value == (123, 117, 104)
    strong = mapper.strong_augmentation
    assert strong.color_jitter == (0.5, 0.5, 0.5, 0.25) and strong.cutout_scale == (0.1, 0.5)
    np.random.seed(0)
    out = mapper(_dict(sample))
    assert out["image"].shape == out["image_strong"].shape == (3, 64, 64)
    assert out["image"].dtype == out["image_strong"].dtype == torch.uint8
    assert out["masks"].shape[1:] == (32, 32) and 1 <= len(out["masks"]) <= 2
    assert not bool(out["valid"].all())  # the cutout is always there
    assert not bool((out["masks"] & ~out["valid"]).any())
    cfg.INPUT.STRONG_AUG.ENABLED = False
    assert SA1BDatasetMapper(cfg).strong_augmentation is None


def test_dino_source_needs_no_json(tmp_path):
    s = data_factory.write_sample(tmp_path, "img", 40, 50)
    mapper = SA1BDatasetMapper(_cfg(MASK_SOURCE="dino"))
    out = mapper({"file_name": s["file_name"], "image_id": "img"})  # no annotation_file
    assert out["masks"].shape == (0, 32, 32) and out["masks"].dtype == torch.bool
    assert out["valid"].shape == (32, 32)
    with pytest.raises(ValueError, match="unknown mask source 'sam'"):
        SA1BDatasetMapper(_cfg(MASK_SOURCE="sam"))


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_become_rgb(tmp_path, mode):
    s = data_factory.write_sample(tmp_path, "sa_3", 32, 32, mode=mode)
    out = SA1BDatasetMapper(augmentations=[], mask_resolution=8)(_dict(s))
    assert out["image"].shape == (3, 32, 32)
    stored = torch.from_numpy(np.array(s["image"]))
    if mode == "L":
        assert all(torch.equal(out["image"][c], stored) for c in range(3))
    else:
        assert torch.equal(out["image"], stored[..., :3].permute(2, 0, 1))


def test_exif_rotation_is_applied_and_masks_live_on_the_corrected_image(tmp_path, caplog):
    # Stored 40x64 with orientation 6 (rotate 90 degrees): the corrected image is 64x40.
    good = data_factory.write_sample(tmp_path, "sa_4", 40, 64, exif_orientation=6)
    out = SA1BDatasetMapper(augmentations=[], mask_resolution=8)(_dict(good))
    assert out["image"].shape == (3, 64, 40) and (out["height"], out["width"]) == (64, 40)
    expected = np.rot90(good["image"], k=-1)  # orientation 6 = rotate clockwise for display
    assert np.abs(out["image"].permute(1, 2, 0).numpy().astype(int) - expected).max() == 0
    full = _expected_masks(good["masks"], T.TransformList([]), (64, 40), 8)
    assert torch.equal(out["masks"], _largest_first(full))
    # Masks made on the stored (unrotated) grid disagree with the corrected image: a logged skip.
    bad = data_factory.write_sample(
        tmp_path, "sa_5", 40, 64, exif_orientation=6, mask_size=(40, 64), image_entry=False
    )
    with caplog.at_level(logging.WARNING):
        assert SA1BDatasetMapper(augmentations=[], mask_resolution=8)(_dict(bad)) is None
    assert "sa_5.json" in caplog.text and "[40, 64]" in caplog.text and "64x40" in caplog.text


def _corrupt_jpeg(s):
    data = open(s["file_name"], "rb").read()
    open(s["file_name"], "wb").write(data[: len(data) // 3])
    return "sa_9.jpg", "cannot read the image"


def _missing_json(s):
    import os

    os.remove(s["annotation_file"])
    return "sa_9.json", "annotation file not found"


def _broken_json(s):
    open(s["annotation_file"], "w").write('{"annotations": [')
    return "sa_9.json", "cannot read the annotation JSON"


def _no_annotations(s):
    json.dump(
        {"image": {"height": 32, "width": 48}, "annotations": []}, open(s["annotation_file"], "w")
    )
    return "sa_9.json", "no annotations"


def _mask_size_mismatch(s):
    record = json.load(open(s["annotation_file"]))
    record["annotations"][2]["segmentation"] = data_factory.encode(np.ones((1, 48, 32), bool))[0]
    json.dump(record, open(s["annotation_file"], "w"))
    return "sa_9.json", "annotation 2 has size [48, 32]"


def _image_entry_mismatch(s):
    record = json.load(open(s["annotation_file"]))
    record["image"]["height"] = 33
    json.dump(record, open(s["annotation_file"], "w"))
    return "sa_9.json", "'image' says 33x48"


def _bad_counts(s):
    record = json.load(open(s["annotation_file"]))
    record["annotations"][1]["segmentation"]["counts"] = "0"
    json.dump(record, open(s["annotation_file"], "w"))
    return "sa_9.json", "annotation 1: runs cover 0 pixels"


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_jpeg, _missing_json, _broken_json, _no_annotations, _mask_size_mismatch,
     _image_entry_mismatch, _bad_counts],
)  # fmt: skip
def test_bad_samples_are_logged_skips_or_clear_errors(tmp_path, caplog, corrupt):
    s = data_factory.write_sample(tmp_path, "sa_9", 32, 48)
    file_hint, reason = corrupt(s)
    mapper = SA1BDatasetMapper(augmentations=[], mask_resolution=8)
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert mapper(_dict(s)) is None
    assert file_hint in caplog.text and reason in caplog.text
    strict = SA1BDatasetMapper(augmentations=[], mask_resolution=8, skip_bad_samples=False)
    with pytest.raises(BadSampleError, match=file_hint.replace(".", r"\.")):
        strict(_dict(s))


def test_missing_image_is_a_logged_skip(tmp_path, caplog):
    d = {"file_name": str(tmp_path / "sa_1.jpg"), "annotation_file": str(tmp_path / "sa_1.json")}
    with caplog.at_level(logging.WARNING, logger="pixelclip.data.mapper"):
        assert SA1BDatasetMapper(augmentations=[], mask_resolution=8)(d) is None
    assert "sa_1.jpg" in caplog.text


def test_detectron2_map_dataset_replaces_a_bad_sample(tmp_path):
    good = data_factory.write_sample(tmp_path, "sa_1", 32, 32)
    bad = data_factory.write_sample(tmp_path, "sa_2", 32, 32)
    _no_annotations(bad)
    dataset = MapDataset(
        DatasetFromList([_dict(bad), _dict(good)], copy=False),
        SA1BDatasetMapper(augmentations=[], mask_resolution=8),
    )
    assert dataset[0]["image_id"] == "sa_1"  # the skip is retried with another sample


def test_strong_augmentation_steps():
    image = torch.from_numpy(np.array(data_factory.random_image(32, 48, 1))).permute(2, 0, 1)
    np.random.seed(0)
    gray, box = StrongAugmentation(
        color_jitter_prob=0, grayscale_prob=1, blur_prob=0, cutout_scale=(0, 0)
    )(image)
    assert box is None
    expected = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).round()
    assert (gray.float() - expected).abs().max() <= 1 and torch.equal(gray[0], gray[2])
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 48), np.uint8))
    only_blur = StrongAugmentation(
        color_jitter_prob=0, grayscale_prob=0, blur_prob=1, cutout_scale=(0, 0)
    )
    blurred, _ = only_blur(noise)
    assert blurred.float().diff(dim=-1).abs().mean() < 0.8 * noise.float().diff(dim=-1).abs().mean()
    only_jitter = StrongAugmentation(
        grayscale_prob=0, blur_prob=0, color_jitter_prob=1, cutout_scale=(0, 0)
    )
    assert not torch.equal(only_jitter(image)[0], image)
    with pytest.raises(ValueError, match="cutout_scale"):
        StrongAugmentation(cutout_scale=(0.6, 0.5))


def test_ssd_colour_transform_brightness_and_contrast():
    from pixelclip.data.augment import ColorAugSSDTransform

    image = data_factory.random_image(8, 8, 2)
    t = ColorAugSSDTransform("RGB", 20.0, 1.5, None, None, contrast_first=True)
    step = np.clip(image.astype(np.float32) + 20.0, 0, 255).astype(np.uint8)
    expected = np.clip(step.astype(np.float32) * 1.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(t.apply_image(image), expected)
    hue = ColorAugSSDTransform("RGB", None, None, None, 90, contrast_first=False)
    assert not np.array_equal(hue.apply_image(image), image)  # half a turn of the hue circle
