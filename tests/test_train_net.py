"""The real entry point, tools/train_net.py, end to end on generated data: training on an
SA-1B-format folder through the registered "sa1b_train", then --eval-only on a generated benchmark
folder through a registered benchmark name (VOC-21 layout)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_factory import write_sa1b_folder
from PIL import Image

from pixelclip.data.benchmarks import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"


def _write_voc(root: Path, count: int = 3) -> None:
    """The tree datasets/prepare_voc.py writes for VOC-21 (label PNGs 0..20, 255 = ignore)."""
    spec = next(b for b in BENCHMARKS if b.name == "voc_21_val_sem_seg")
    images, labels = root / spec.image_dir, root / spec.gt_dir
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(images / f"img{i}{spec.image_ext}")
        label = np.full((48, 64), 255, np.uint8)
        label[:24] = 0
        label[24:, :32] = 15
        Image.fromarray(label).save(labels / f"img{i}{spec.gt_ext}")


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(CONFIG), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _miou(output: str) -> list[float]:
    """The numbers detectron2 prints under "copypaste: mIoU,fwIoU,mACC,pACC"."""
    lines = output.splitlines()
    index = next(i for i, line in enumerate(lines) if "copypaste: mIoU,fwIoU,mACC,pACC" in line)
    return [float(v) for v in lines[index + 1].split("copypaste:")[1].split(",")]


@pytest.mark.slow
def test_train_then_eval_only_through_train_net(tmp_path):
    """Two CPU processes train (gloo); the checkpoint evaluates to the same numbers with one
    process and with two."""
    datasets = tmp_path / "datasets"
    write_sa1b_folder(datasets / "sa1b", {"sa_000000": 3, "sa_000001": 2}, height=80, width=120)
    _write_voc(datasets)
    out = tmp_path / "out"
    env = {"DETECTRON2_DATASETS": str(datasets), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    _run(
        ["--num-gpus", "2", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"],
        env,
    )
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]  # = loss_masks, the only loss
    assert losses and all(np.isfinite(losses))

    scores = []
    for processes in ("1", "2"):
        evaluate = _run(
            [
                "--eval-only",
                "--num-gpus",
                processes,
                "MODEL.WEIGHTS",
                str(out / "model_final.pth"),
                "OUTPUT_DIR",
                str(out / f"eval{processes}"),
                "DATASETS.TEST",
                "('voc_21_val_sem_seg',)",
            ],
            env,
        )
        predictions = out / f"eval{processes}" / "inference" / "voc_21_val_sem_seg"
        assert (predictions / "sem_seg_predictions.json").is_file()
        scores.append(_miou(evaluate.stdout + evaluate.stderr))
    assert scores[0] == scores[1]
