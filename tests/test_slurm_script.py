"""tools/slurm_train.sh with stand-ins for sbatch's environment, srun, scontrol and python: each
node's task starts train_net.py with its machine rank and the first node's rendezvous address."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "slurm_train.sh"


def _fake_bin(folder: Path, calls: Path) -> Path:
    folder.mkdir()
    scripts = {
        # scontrol show hostnames NODELIST
        "scontrol": "#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n",
        # srun OPTIONS... COMMAND...: the command once per node, as SLURM does, with its node id
        "srun": "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
        'for id in 0 1; do SLURM_NODEID=$id "$@" || exit $?; done\n',
        "python": f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n",
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def test_one_task_per_node_with_its_rank_and_the_first_nodes_address(tmp_path):
    calls = tmp_path / "calls.jsonl"
    fake = _fake_bin(tmp_path / "bin", calls)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "SLURM_JOB_ID": "12345", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_SUBMIT_DIR": str(REPO)}  # fmt: skip
    overrides = ["DATASETS.SA1B.SHARDS", "/data/sa_{000000..000049}.tar", "OUTPUT_DIR", "/out"]
    run = subprocess.run(["bash", str(SCRIPT), "configs/x.yaml", *overrides], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 nodes x 8 GPUs, rendezvous tcp://node-a:32345" in run.stdout
    got = [json.loads(line) for line in calls.read_text().splitlines()]
    common = ["tools/train_net.py", "--config-file", "configs/x.yaml", "--resume",
              "--num-gpus", "8", "--num-machines", "2"]  # fmt: skip
    assert got == [
        [*common, "--machine-rank", str(rank), "--dist-url", "tcp://node-a:32345", *overrides]
        for rank in (0, 1)
    ]


def test_outside_slurm_it_says_how_to_run_it(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    run = subprocess.run(["bash", str(SCRIPT), "configs/x.yaml"], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode != 0 and "run this script with sbatch" in run.stderr
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "usage: sbatch tools/slurm_train.sh CONFIG" in run.stderr
