"""Samples/s of the training mapper against a straightforward yardstick mapper (``mapper:*``)
on a generated SA-1B-format sample."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .common import REPO, summary, timed_runs


def write_sa1b_sample(
    folder: Path, height: int, width: int, num_masks: int, seed: int = 0, number: int = 1
):
    """One SA-1B-format sample ``sa_<number>.jpg`` + ``.json`` (compressed RLE): random
    ellipses/rectangles."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    annotations = []
    for i in range(num_masks):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.01, 0.3) * height, rng.uniform(0.01, 0.3) * width
        # Evaluated on the shape's bounding box (plus a margin) only: outside it both tests are
        # False, so the mask equals the whole-image evaluation, ~10x cheaper at 1500 x 2250.
        y0, y1 = max(0, int(cy - ry) - 2), min(height, int(cy + ry) + 3)
        x0, x1 = max(0, int(cx - rx) - 2), min(width, int(cx + rx) + 3)
        by, bx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        m = np.zeros((height, width), dtype=bool)
        if i % 2:
            m[y0:y1, x0:x1] = ((by - cy) / ry) ** 2 + ((bx - cx) / rx) ** 2 < 1
        else:
            m[y0:y1, x0:x1] = (abs(by - cy) < ry) & (abs(bx - cx) < rx)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle = {"size": [height, width], "counts": rle["counts"].decode()}
        annotations.append({"id": i, "segmentation": rle, "area": int(m.sum())})
    image = (np.sin(yy / 37)[..., None] * 60 + rng.uniform(60, 190, 3)).astype(np.uint8)
    stem = f"sa_{number}"
    Image.fromarray(image).save(folder / f"{stem}.jpg", quality=90)
    info = {"image_id": number, "file_name": f"{stem}.jpg", "height": height, "width": width}
    (folder / f"{stem}.json").write_text(json.dumps({"image": info, "annotations": annotations}))
    return {"file_name": str(folder / f"{stem}.jpg"),
            "annotation_file": str(folder / f"{stem}.json"), "image_id": stem}  # fmt: skip


class YardstickMapper:
    """A straightforward mapper: decode every RLE at full resolution with pycocotools, one by
    one, push each full mask through detectron2's transforms, pad, and resize it to the grid
    with PyTorch ``nearest``. Image handling is the real mapper's (shared code), so the
    comparison isolates the mask path."""

    def __init__(self, mapper) -> None:
        self.m = mapper

    def __call__(self, d: dict) -> dict:
        import numpy as np
        import torch
        import torch.nn.functional as F
        from detectron2.data import detection_utils as utils
        from detectron2.data import transforms as T
        from pycocotools import mask as mask_utils

        from ..data.sa1b import load_sa1b_annotations

        m = self.m
        image = utils.read_image(d["file_name"], format=m.image_format)
        segmentations, _ = load_sa1b_annotations(d["annotation_file"])
        aug_input = T.AugInput(image)
        transforms = m.augmentations(aug_input)
        weak = torch.from_numpy(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        strong, box = weak, None
        if m.strong_augmentation is not None:
            strong, box = m.strong_augmentation(weak)
        (content_h, content_w), (frame_h, frame_w) = weak.shape[-2:], weak.shape[-2:]
        if m.pad_size is not None:
            frame_h, frame_w = max(frame_h, m.pad_size[0]), max(frame_w, m.pad_size[1])
        weak, strong = m._pad(weak, frame_h, frame_w), m._pad(strong, frame_h, frame_w)
        valid = m._valid_grid(content_h, content_w, frame_h, frame_w, box)
        grids = []
        for seg in segmentations:
            counts = seg["counts"]
            rle = {
                "size": seg["size"],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
            full = transforms.apply_segmentation(mask_utils.decode(rle))
            framed = np.zeros((frame_h, frame_w), np.uint8)
            framed[: full.shape[0], : full.shape[1]] = full
            grid = F.interpolate(torch.from_numpy(framed)[None, None].float(),
                                 size=(m.mask_resolution,) * 2, mode="nearest")  # fmt: skip
            grids.append(grid[0, 0].numpy() > 0)
        masks = m._select(np.stack(grids) & valid[None])
        return {"image": weak, "image_strong": strong, "masks": torch.from_numpy(masks),
                "valid": torch.from_numpy(valid)}  # fmt: skip


def bench_mapper(spec: str, s: dict, args) -> dict:
    import numpy as np
    import torch
    from detectron2.config import get_cfg

    from ..checkpoint import merge_config_file
    from ..config import add_pixelclip_config
    from ..data.mapper import SA1BDatasetMapper

    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, REPO / "configs" / "Base-PixelCLIP.yaml")
    cfg.INPUT.MIN_SIZE_TRAIN = (s["mapper_min_size"],)
    cfg.INPUT.CROP.SIZE = (s["mapper_crop"],) * 2
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = s["grid"]
    ours = SA1BDatasetMapper(cfg, is_train=True)
    mapper = ours if spec == "mapper:ours" else YardstickMapper(ours)
    if args.sample_dir:
        folder = Path(args.sample_dir)
        d = {"file_name": str(folder / "sa_1.jpg"), "annotation_file": str(folder / "sa_1.json")}
    else:  # a worker started by hand makes its own sample
        tmp = tempfile.TemporaryDirectory(prefix="pixelclip-bench-")
        d = write_sa1b_sample(Path(tmp.name), *s["mapper_image"], s["mapper_masks"])
    np.random.seed(0)
    torch.manual_seed(0)
    out = summary(timed_runs(lambda: mapper(d), args.warmup, args.repeats))
    out["samples_per_s"] = 1.0 / out["median_s"]
    out["settings"] = {"image": list(s["mapper_image"]), "masks": s["mapper_masks"],
                       "min_size_train": s["mapper_min_size"], "crop": s["mapper_crop"],
                       "mask_resolution": s["grid"]}  # fmt: skip
    if spec == "mapper:yardstick":  # the two must produce the same sample
        same = []
        for seed in range(2):
            np.random.seed(seed)
            a = ours(d)
            np.random.seed(seed)
            b = mapper(d)
            same.append(
                all(torch.equal(a[k], b[k]) for k in ("image", "image_strong", "masks", "valid"))
            )
        out["matches_mapper"] = all(same)
    return out
