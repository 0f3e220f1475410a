"""Samples/s of one data-loader worker reading SA-1B from tar shards against the extracted folder
(``shards:tar`` / ``shards:folder``).

Both read the same generated release-style samples (SA-1B's 1500 x 2250 JPEGs with photo-like
detail, 100 RLE masks each) and map them with the base recipe's mapper (shortest edge 1024, 640
crop, SSD colour, flip, strong view, 256 x 256 mask grid): the tar source through
:class:`~pixelclip.data.shard_stream.SA1BShardStream` (tar headers, member bytes, the mapper's
in-memory entry, the downscale of DATASETS.SA1B.DOWNSCALE), the folder source file by file. One
timed run maps every sample once, with one torch thread (what PyTorch gives each data-loader
worker). The files are in the page cache (just written): the numbers are the CPU cost of a worker,
not the throughput of a disk or a network file system.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from .common import REPO, summary

# Samples, image size and masks of the real and the --quick settings.
SIZES = {False: {"samples": 6, "image": (1500, 2250), "masks": 100, "min_size": 1024, "crop": 640,
                 "grid": 256},
         True: {"samples": 3, "image": (150, 225), "masks": 10, "min_size": 96, "crop": 64,
                "grid": 32}}  # fmt: skip


def write_shard_samples(folder: Path, quick: bool) -> Path:
    """``folder/extracted/sa_N.{jpg,json}`` and the same pairs in ``folder/sa_000000.tar``."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    s = SIZES[quick]
    (h, w), extracted = s["image"], folder / "extracted"
    extracted.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    with tarfile.open(folder / "sa_000000.tar", "w") as tar:
        for n in range(1, s["samples"] + 1):
            rng = np.random.default_rng(n)
            annotations = []
            for i in range(s["masks"]):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                ry, rx = rng.uniform(0.01, 0.3) * h, rng.uniform(0.01, 0.3) * w
                if i % 2:
                    m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
                else:
                    m = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                segmentation = {"size": [h, w], "counts": rle["counts"].decode()}
                annotations.append({"id": i, "area": int(m.sum()), "segmentation": segmentation})
            # Smooth structure plus grain: ~0.7 MB at quality 90, about an SA-1B photo.
            base = np.stack([np.sin(xx / 53 + n), np.cos(yy / 71), np.sin((xx + yy) / 97)], -1)
            image = (base * 60 + 128 + rng.normal(0, 9, (h, w, 3))).clip(0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=90)
            info = {"image_id": n, "file_name": f"sa_{n}.jpg", "height": h, "width": w}
            record = {"image": info, "annotations": annotations}
            members = {f"sa_{n}.jpg": buf.getvalue(), f"sa_{n}.json": json.dumps(record).encode()}
            for name, data in members.items():
                (extracted / name).write_bytes(data)
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return folder


def bench_shards(spec: str, s: dict, args) -> dict:
    import numpy as np
    import torch
    from detectron2.config import get_cfg

    from ..checkpoint import merge_config_file
    from ..config import add_pixelclip_config
    from ..data.mapper import SA1BDatasetMapper
    from ..data.sa1b_shards import list_shards, shard_sample_counts
    from ..data.shard_stream import SA1BShardStream

    sizes = SIZES[bool(args.quick)]
    source = spec.split(":")[1]
    folder = Path(args.sample_dir) / "shards" if args.sample_dir else None
    if folder is None or not folder.is_dir():  # a worker started by hand makes its own samples
        tmp = tempfile.TemporaryDirectory(prefix="pixelclip-bench-")
        folder = write_shard_samples(Path(tmp.name), bool(args.quick))
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    merge_config_file(cfg, REPO / "configs" / "Base-PixelCLIP.yaml")
    cfg.INPUT.MIN_SIZE_TRAIN = (sizes["min_size"],)
    cfg.INPUT.CROP.SIZE = (sizes["crop"],) * 2
    cfg.MODEL.PIXELCLIP.MASK_RESOLUTION = sizes["grid"]
    if source == "tar":
        cfg.DATASETS.SA1B.SHARDS = str(folder / "sa_000000.tar")
    mapper = SA1BDatasetMapper(cfg, is_train=True)
    n = sizes["samples"]
    if source == "tar":
        shards = list_shards(cfg.DATASETS.SA1B.SHARDS)
        stream = SA1BShardStream(shards, shard_sample_counts(shards), mapper, seed=0,
                                 images_per_batch=1)  # fmt: skip

        def run():
            out = [x for _, x in zip(range(n), stream)]
            assert len(out) == n and all(o["masks"].shape[0] for o in out)

    else:
        dicts = [{"file_name": str(folder / "extracted" / f"sa_{i}.jpg"),
                  "annotation_file": str(folder / "extracted" / f"sa_{i}.json"),
                  "image_id": f"sa_{i}"} for i in range(1, n + 1)]  # fmt: skip

        def run():
            out = [mapper(d) for d in dicts]
            assert all(o is not None and o["masks"].shape[0] for o in out)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a data-loader worker
    np.random.seed(0)
    try:
        for _ in range(args.warmup):
            run()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    out = summary(times)
    out["samples_per_s"] = n / out["median_s"]
    member_bytes = [p.stat().st_size for p in (folder / "extracted").iterdir()]
    out["settings"] = {"source": source, "samples_per_run": n, "image": list(sizes["image"]),
                       "masks": sizes["masks"], "min_size_train": sizes["min_size"],
                       "crop": sizes["crop"], "mask_resolution": sizes["grid"], "torch_threads": 1,
                       "downscale": bool(source == "tar" and mapper.downscale_to),
                       "mean_sample_bytes": 2 * sum(member_bytes) / len(member_bytes)}  # fmt: skip
    return out
