"""Two "machines" on one host: tools/train_net.py --num-machines 2 --machine-rank 0/1, one CPU
process each (gloo over tcp://127.0.0.1), train from generated SA-1B tar shards, checkpoint,
resume on both machines and evaluate on a generated VOC-layout benchmark."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shard_factory import write_sa1b_shards
from test_train_net import _miou, _write_voc

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_machines(out: Path, shards: Path, datasets: Path, *extra: str) -> list[str]:
    """Both machines of one run; returns their logs. A failure or a timeout kills both."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    env = {"DETECTRON2_DATASETS": str(datasets), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    procs, logs = [], [out.parent / f"{out.name}.machine{r}.log" for r in range(2)]
    for rank in range(2):
        argv = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(CONFIG),
                "--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url,
                "--num-gpus", "1", *extra, "OUTPUT_DIR", str(out), "DATASETS.SA1B.SHARDS",
                str(shards), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
                "DATASETS.TEST", "('voc_21_val_sem_seg',)"]  # fmt: skip
        with open(logs[rank], "w") as f:
            # A session per machine: the launcher spawns the worker, a kill must reach both.
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=REPO,
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
    try:
        codes = [p.wait(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=60)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)
    # The machine of rank 1 logs to OUTPUT_DIR/log.txt.rank1 only (detectron2's setup_logger).
    return [texts[0], (out / "log.txt.rank1").read_text()]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_two_machines_train_from_shards_resume_and_evaluate(tmp_path):
    datasets, shards = tmp_path / "datasets", tmp_path / "shards"
    write_sa1b_shards(shards, {f"sa_00000{i}": 2 for i in range(4)}, height=80, width=120)
    _write_voc(datasets)

    full = tmp_path / "full"
    logs = _run_two_machines(full, shards, datasets)
    assert "Rank of current process: 1. World size: 2" in logs[1]
    for log in logs:
        assert "SA-1B from 4 tar shards" in log and "2 streams (2 processes x 1 workers)" in log
    assert (full / "model_0000002.pth").is_file() and (full / "model_final.pth").is_file()

    # A run stopped after the checkpoint of iteration 2, then resumed on both machines.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / "model_0000002.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    logs_resumed = _run_two_machines(resumed, shards, datasets, "--resume")
    assert "Starting training from iteration 3" in logs_resumed[0]
    assert "Resuming the data stream at image 6" in logs_resumed[0]

    # The uninterrupted weights, bit for bit (the samples after the resume, their augmentations
    # and the Sinkhorn assignments over both machines are the same), and the same evaluation.
    a, b = _load(full / "model_final.pth"), _load(resumed / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 5
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    first = _load(full / "model_0000002.pth")["model"]
    assert any(not torch.equal(first[k], a["model"][k]) for k in a["model"])  # it trained on
    assert _miou(logs[0]) == _miou(logs_resumed[0])
