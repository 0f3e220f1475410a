"""Reliability: a killed training run resumes to the same weights, checkpoints are
written atomically, malicious pickles are refused on every weight path, impossible configs fail
at build time, interrupted mask generation resumes. docs/RELIABILITY.md maps cases to tests."""

import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factory import write_sa1b_folder
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image
from test_meta_arch import tiny_cfg

from pixelclip.checkpoint import PixelCLIPCheckpointer
from pixelclip.data.sa1b_format import read_sa1b_json
from pixelclip.engine.resume import ResumableTrainingSampler
from pixelclip.masks.cli import main as generate_masks_main

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"


def _same(x, y) -> bool:
    """Recursive bitwise equality of nested dicts / lists / tensors / scalars."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_same, x, y))
    return x == y


# ----------------------------------------------------------------- 1. kill and --resume
def _launch(out: Path, datasets: Path, log: Path, resume: bool = False) -> subprocess.Popen:
    """tools/train_net.py with 2 CPU processes, 8 iterations, a checkpoint every 2."""
    argv = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
    argv += ["--num-gpus", "2", *(["--resume"] if resume else []), "OUTPUT_DIR", str(out)]
    argv += ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()"]
    env = {"DETECTRON2_DATASETS": str(datasets), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as f:
        # A new session: launch() spawns workers, and SIGKILL must reach the whole group.
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_identical_weights(tmp_path):
    datasets = tmp_path / "datasets"
    write_sa1b_folder(datasets / "sa1b", {"sa_000000": 4}, height=80, width=120)
    full, killed = tmp_path / "full", tmp_path / "killed"
    logs = {name: tmp_path / f"{name}.log" for name in ("full", "killed", "resumed")}

    # The killed run starts first; the uninterrupted reference runs while we wait.
    run = _launch(killed, datasets, logs["killed"])
    tag = killed / "last_checkpoint"
    deadline = time.monotonic() + 600
    # Kill once the second checkpoint (after iteration 3 of 0..7) is tagged: the run is then in
    # iteration 4 or 5, mid-step or writing the next checkpoint.
    while not (tag.is_file() and tag.read_text() == "model_0000003.pth"):
        assert run.poll() is None, logs["killed"].read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 600 s"
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait(timeout=60) == -signal.SIGKILL
    assert not (killed / "model_final.pth").exists()
    tagged = tag.read_text()
    assert tagged in {"model_0000003.pth", "model_0000005.pth"}

    reference = _launch(full, datasets, logs["full"])
    assert reference.wait(timeout=600) == 0, logs["full"].read_text()[-3000:]
    resumed = _launch(killed, datasets, logs["resumed"], resume=True)
    assert resumed.wait(timeout=600) == 0, logs["resumed"].read_text()[-3000:]

    # The resumed process really started from the checkpoint: a fresh start from iteration 0
    # with the same seed would reproduce the weights too, so this is what makes the test bite.
    start = int(tagged[len("model_") : -len(".pth")]) + 1
    assert f"Starting training from iteration {start}" in logs["resumed"].read_text()
    a, b = _load(full / "model_final.pth"), _load(killed / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 7
    for part in ("backbone.", "teacher.", "sem_seg_head.prompts.", "sem_seg_head.decoder."):
        assert any(k.startswith(part) for k in a["model"]), part
    first = _load(full / "model_0000001.pth")["model"]
    assert not _same(first, a["model"])  # training moved the weights after the 1st checkpoint
    # Bit-identical: every weight, the optimizer (momentum buffers), the LR scheduler.
    assert a["model"].keys() == b["model"].keys()
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    assert _same(a["trainer"], b["trainer"])


def test_resumable_sampler_continues_the_uninterrupted_stream():
    full = ResumableTrainingSampler(7, seed=3)
    stream = [i for _, i in zip(range(40), full)]
    assert sorted(stream[:7]) == list(range(7))  # a permutation per epoch
    resumed = ResumableTrainingSampler(7, seed=3)
    resumed.start_at(12)
    assert [i for _, i in zip(range(28), resumed)] == stream[12:]
    with pytest.raises(ValueError, match="non-negative multiple"):
        resumed.start_at(-1)


def test_a_run_with_seed_minus_one_resumes_with_the_seed_it_drew():
    """SEED -1 (the shipped 10k configs): the random data seed travels in the checkpoint."""
    from detectron2.engine import TrainerBase

    from pixelclip.engine.resume import DeterministicResumeHook

    def trainer_with(seed):
        trainer = TrainerBase()
        sampler = ResumableTrainingSampler(9, seed=seed)
        trainer.register_hooks([DeterministicResumeHook(sampler, 3, seed)])
        return trainer, sampler

    first, first_sampler = trainer_with(1234)  # the seed the first process drew
    first.iter = 4
    state = first.state_dict()  # what the checkpointer saves as "trainer"
    assert state["hooks"]["DeterministicResumeHook"] == {"data_seed": 1234}
    stream = [i for _, i in zip(range(30), first_sampler)]

    resumed, resumed_sampler = trainer_with(987)  # a new process draws another seed
    resumed.load_state_dict(state)
    resumed.start_iter = 4
    resumed._hooks[0].before_train()
    assert [i for _, i in zip(range(18), resumed_sampler)] == stream[12:]


def test_replacements_of_bad_samples_are_the_same_after_a_resume():
    """A bad sample's replacement depends only on (seed, index, attempt), unlike detectron2's
    MapDataset, whose replacement RNG and pool restart with the process."""
    from detectron2.data.common import MapDataset

    from pixelclip.engine.resume import SeededMapDataset

    dicts = list(range(10))
    bad = {2, 3, 5, 7}

    def mapper(d):
        return None if d in bad else d

    order = [2, 3, 5, 7, 2, 3, 5, 7, 2, 3]  # the indices of an epoch with many bad samples
    uninterrupted = SeededMapDataset(dicts, mapper, seed=11)
    stream = [uninterrupted[i] for i in order]
    assert all(x not in bad for x in stream)
    resumed = SeededMapDataset(dicts, mapper, seed=11)  # a new process after --resume at 6
    assert [resumed[i] for i in order[6:]] == stream[6:]
    assert [SeededMapDataset(dicts, mapper, seed=12)[i] for i in order] != stream  # seeded

    theirs = MapDataset(dicts, mapper)
    their_stream = [theirs[i] for i in order]
    theirs_resumed = MapDataset(dicts, mapper)
    assert [theirs_resumed[i] for i in order[6:]] != their_stream[6:]  # why this class exists


# ------------------------------------------------------- 1. kill during checkpointing
def _killed_save(checkpointer, name: str, at_tag: bool = False) -> None:
    """Fork; the child saves ``name`` and SIGKILLs itself halfway through the file (or, with
    ``at_tag``, while the checkpoint is complete but before ``last_checkpoint`` is switched)."""
    pid = os.fork()
    if pid == 0:  # child: never returns to pytest
        try:
            real_save = torch.save

            def half_save(obj, f, *args, **kwargs):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                if isinstance(f, (str, os.PathLike)):
                    f = open(f, "wb")  # noqa: SIM115
                f.write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            if at_tag:
                real_replace = os.replace

                def replace(src, dst):
                    if str(dst).endswith("last_checkpoint"):
                        os.kill(os.getpid(), signal.SIGKILL)
                    real_replace(src, dst)

                os.replace = replace
            else:
                torch.save = half_save
            checkpointer.save(name)
        finally:
            os._exit(3)  # only reached if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(16, 16)


@pytest.mark.parametrize("case", ["new_name", "same_name", "at_tag"])
def test_kill_while_checkpointing_resumes_from_the_last_complete_checkpoint(tmp_path, case):
    model = _linear(0)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = PixelCLIPCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001" if case != "same_name" else "model_final")
    with torch.no_grad():
        model.weight.add_(1.0)  # the state being saved when the process dies
    name = {"new_name": "model_0000003", "same_name": "model_final", "at_tag": "model_0000003"}
    _killed_save(checkpointer, name[case], at_tag=case == "at_tag")

    stale = sorted(p.name for p in tmp_path.glob(".*.tmp*"))
    assert len(stale) == 1  # the temporary file of the killed save, under a hidden name
    assert (tmp_path / "last_checkpoint").read_text() in {"model_0000001.pth", "model_final.pth"}
    if case == "new_name":
        assert not (tmp_path / "model_0000003.pth").exists()
    fresh = _linear(1)
    PixelCLIPCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert _same(fresh.state_dict(), first)
    checkpointer.save("model_0000005")  # the next save removes the leftover
    assert sorted(p.name for p in tmp_path.glob(".*.tmp*")) == []
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"


def test_resume_reads_the_checkpoint_file_once(tmp_path, monkeypatch):
    from pixelclip.checkpoint import checkpointer as module

    PixelCLIPCheckpointer(_linear(0), str(tmp_path)).save("model_0000001")
    reads = []
    real = module.read_checkpoint
    monkeypatch.setattr(module, "read_checkpoint", lambda p, *a, **k: reads.append(p) or real(p))
    fresh = _linear(1)
    PixelCLIPCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert [os.path.basename(p) for p in reads] == ["model_0000001.pth"]
    assert torch.equal(fresh.weight, _linear(0).weight)


def test_plain_detectron2_checkpointer_is_corrupted_by_the_same_kill(tmp_path):
    """Control: the kill above does break a non-atomic writer (so those tests can fail)."""
    model = _linear(0)
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    _killed_save(checkpointer, "model_final")
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    with pytest.raises(ValueError, match="truncated or corrupt"):
        PixelCLIPCheckpointer(_linear(1), str(tmp_path)).resume_or_load("", resume=True)


def test_checkpoint_files_get_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        PixelCLIPCheckpointer(_linear(0), str(tmp_path)).save("model_0000001")
    finally:
        os.umask(mask)
    assert (tmp_path / "model_0000001.pth").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "last_checkpoint").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------- 2. malicious pickles
class _Payload:
    """Unpickling this object creates a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_file(path: Path, marker: Path, state: dict) -> Path:
    torch.save({**state, "x": _Payload(marker)}, path)
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload works when unpickled unsafely
    assert marker.exists()
    marker.unlink()
    return path


def test_malicious_pickle_refused_through_clip_pretrained_and_dino_weights(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "evil.pt", marker, {"visual.proj": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"evil\.pt.*weights_only"):
        build_model(tiny_cfg(**{"MODEL.CLIP.PRETRAINED": str(evil)}))
    assert not marker.exists()
    cfg = tiny_cfg(**{"INPUT.MASK_SOURCE": "dino", "MODEL.DINO.RESOLUTION": 64,
                      "MODEL.DINO.NUM_CLUSTERS": 4, "MODEL.DINO.WEIGHTS": str(evil)})  # fmt: skip
    with pytest.raises(ValueError, match=r"evil\.pt: refused.*weights_only"):
        build_model(cfg)
    assert not marker.exists()


def test_malicious_tagged_checkpoint_refused_on_resume(tmp_path):
    """A file planted as ``last_checkpoint``'s target is refused by ``--resume``."""
    marker = tmp_path / "pwned"
    _evil_file(tmp_path / "model_0000009.pth", marker, {"model": {"weight": torch.zeros(16, 16)}})
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(ValueError, match=r"model_0000009\.pth: refused"):
        PixelCLIPCheckpointer(_linear(0), str(tmp_path)).resume_or_load("", resume=True)
    assert not marker.exists()


# ------------------------------------------------------------ 3. config validation
@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("MODEL.PROMPT.NUM_CLUSTERS", 1, ">= 2"),
        ("MODEL.PROMPT.LENGTH", 0, ">= 1"),
        ("MODEL.PIXELCLIP.TEMPERATURE", 0.0, "> 0"),
        ("MODEL.PIXELCLIP.TEMPERATURE", -1.0, "> 0"),
        ("MODEL.CLIP.RESOLUTION", 70, "multiple of the image tower's stride 16"),
        ("MODEL.CLIP.FINETUNE", "lora", "'attention', 'full', 'none'"),
        ("INPUT.MASK_SOURCE", "felzenszwalb", "['sa1b', 'dino']"),
    ],
)
def test_impossible_config_names_the_full_key_and_the_allowed_values(key, value, allowed):
    with pytest.raises(ValueError) as info:
        build_model(tiny_cfg(**{key: value}))
    message = str(info.value)
    assert key in message and repr(value) in message and allowed in message, message


@pytest.mark.parametrize("content", ["[]", '{"stuff_classes": []}'])
def test_empty_vocabulary_file_fails_at_build(tmp_path, content):
    path = tmp_path / "vocabulary.json"
    path.write_text(content)
    with pytest.raises(
        ValueError, match=r"VOCABULARY_FILE: .*vocabulary\.json.*empty.*at least one class name"
    ):
        build_model(tiny_cfg(**{"MODEL.PIXELCLIP.TEST.VOCABULARY_FILE": str(path)}))


# -------------------------------------------------- 5. interrupted mask generation
def _photos(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(
            root / f"{name}.png"
        )
    (root / "e.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")  # corrupt, among valid ones
    return root


def _halves(image: np.ndarray) -> list[dict]:
    left = np.zeros(image.shape[:2], bool)
    left[:, : image.shape[1] // 2] = True
    return [{"segmentation": left}, {"segmentation": ~left}]


def test_mask_generation_interrupted_then_resumed(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "masks"
    argv = ["--input", str(photos), "--output", str(out), "--source", "dino", "--no-progress"]
    calls = []

    def interrupted(image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the 3rd image is being processed
        return _halves(image)

    with pytest.raises(KeyboardInterrupt):
        generate_masks_main(argv, mask_fn=interrupted)
    done = sorted(p.name for p in out.glob("*.json"))
    assert done == ["a.json", "b.json"]
    assert all(len(read_sa1b_json(out / n)["annotations"]) == 2 for n in done)

    # SIGKILL in the middle of writing the 3rd JSON (half the bytes on disk).
    pid = os.fork()
    if pid == 0:
        try:
            import pixelclip.data.sa1b_format as sa1b_format

            real_writer = sa1b_format.write_atomically

            def killed_while_writing(path, write):
                def half_then_kill(f):
                    f.write(b'{"image": {"image_id": 3, "wid')  # part of the JSON is on disk
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

                real_writer(path, half_then_kill)

            sa1b_format.write_atomically = killed_while_writing
            generate_masks_main(argv, mask_fn=_halves)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json"]  # no half JSON
    capsys.readouterr()

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert generate_masks_main(argv, mask_fn=_halves) == 0
    summary = capsys.readouterr().out
    assert "processed 2, skipped 2, failed 1" in summary  # e.jpg is reported and skipped
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json", "c.json", "d.json"]
    assert mtimes == {n: (out / n).stat().st_mtime_ns for n in mtimes}  # finished: untouched
    for name in ("c.json", "d.json"):
        assert len(read_sa1b_json(out / name)["annotations"]) == 2
