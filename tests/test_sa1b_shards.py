"""SA-1B from its release tar shards: listing, pairing, the mapper's in-memory entry, the epoch
split across processes x workers, exact resume without re-reading, on-the-fly downscale, bad
shards."""

import ast
import io
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from data_factory import encode, write_sample
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from PIL import Image
from shard_factory import add_member, pack, write_sa1b_shards

from pixelclip.config import add_pixelclip_config
from pixelclip.data import sa1b_shards
from pixelclip.data.mapper import SA1BDatasetMapper
from pixelclip.data.sa1b_shards import list_shards, read_shard, scan_shard, shard_sample_counts
from pixelclip.data.shard_stream import SA1BShardStream, build_shard_train_loader, epoch_order

REPO = Path(__file__).resolve().parents[1]
TENSORS = ("image", "image_strong", "masks", "valid")


def _keys(stream, n):
    return [d for d in itertools.islice(iter(stream), n)]


def _key_stream(shards, counts, **kw):
    """A stream whose mapper returns the sample's image id (reading real shards)."""
    kw.setdefault("seed", 0)
    kw.setdefault("images_per_batch", 1)
    return SA1BShardStream(shards, counts, lambda d: d["image_id"], **kw)


def _cfg(**overrides):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"))
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in TENSORS)


def _mapper(cfg=None):
    mapper = SA1BDatasetMapper(cfg or _cfg(), is_train=True)
    mapper.dataset_size = 10**6  # not the size another test registered for "sa1b_train"
    return mapper


# ------------------------------------------------------------------------------ listing, pairs
def test_shards_are_named_by_patterns_folders_lists_and_joins(tmp_path, caplog):
    paths, _ = write_sa1b_shards(tmp_path, {f"sa_00000{i}": 1 for i in range(3)})
    as_str = [str(p) for p in paths]
    assert list_shards(str(tmp_path / "sa_{000000..000002}.tar")) == as_str
    assert list_shards(str(tmp_path)) == as_str  # a folder: every .tar, natural order
    (tmp_path / "list.txt").write_text("# the subset\nsa_000002.tar\nsa_00000{0..1}.tar\n")
    assert list_shards(str(tmp_path / "list.txt")) == [as_str[2], as_str[0], as_str[1]]
    assert list_shards(f"{paths[1]}::{paths[0]}::{paths[1]}") == [as_str[1], as_str[0]]
    with caplog.at_level(logging.WARNING):
        assert list_shards(str(tmp_path / "sa_{000000..000004}.tar")) == as_str
    assert "2 of 5 shards are missing" in caplog.text and "sa_000003.tar" in caplog.text
    os.mkfifo(tmp_path / "sa_000009.tar")  # never opened
    assert list_shards(f"{tmp_path / 'sa_000009.tar'}::{paths[0]}") == as_str[:1]
    with pytest.raises(FileNotFoundError, match="names no readable tar file.*a FIFO"):
        list_shards(str(tmp_path / "sa_000009.tar"))


@pytest.mark.parametrize("order", ["pairs", "json-first", "images-first"])
def test_each_image_is_paired_with_its_json_in_any_member_order(tmp_path, order):
    paths, samples = write_sa1b_shards(tmp_path, {"sa_000000": 4}, order=order)
    assert scan_shard(str(paths[0])) == sa1b_shards.ShardScan(4)
    got = list(read_shard(str(paths[0]), 0, 4))
    assert sorted(d["image_id"] for d in got) == [f"sa_{i}" for i in range(1, 5)]
    for d in got:
        stem = d["image_id"]
        extracted = tmp_path / "extracted" / "sa_000000"
        assert d["image_bytes"] == (extracted / f"{stem}.jpg").read_bytes()
        assert d["annotation_bytes"] == (extracted / f"{stem}.json").read_bytes()
        assert d["file_name"] == f"{paths[0]}:{stem}.jpg"
        assert d["annotation_file"] == f"{paths[0]}:{stem}.json"


def test_shards_written_by_webdataset_are_read(tmp_path):
    import webdataset

    _, samples = write_sa1b_shards(tmp_path, {"sa_000000": 2})
    path = tmp_path / "wds.tar"
    with webdataset.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(
                {
                    "__key__": s["image_id"],
                    "jpg": Path(s["file_name"]).read_bytes(),
                    "json": Path(s["annotation_file"]).read_bytes(),
                    "txt": b"ignored",
                }
            )
    got = list(read_shard(str(path), 0, 2))
    assert [d["image_id"] for d in got] == ["sa_1", "sa_2"]
    assert all("bad_sample" not in d for d in got)


def test_in_memory_samples_map_exactly_like_the_extracted_files(tmp_path):
    paths, samples = write_sa1b_shards(tmp_path, {"sa_000000": 2}, height=80, width=120)
    mapper = _mapper()
    for d, s in zip(read_shard(str(paths[0]), 0, 2), samples):
        np.random.seed(7)
        a = mapper(d)
        np.random.seed(7)
        b = mapper({k: s[k] for k in ("file_name", "annotation_file", "image_id")})
        assert _same(a, b) and a["masks"].any()
        assert (a["height"], a["width"]) == (80, 120)
        assert "image_bytes" not in a and "annotation_bytes" not in a  # not sent with the batch


# ---------------------------------------------------------------------------- epoch, workers
def _fake_worker(monkeypatch, worker, workers):
    info = SimpleNamespace(id=worker, num_workers=workers)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)


def _epoch_of_every_stream(shards, counts, world, workers, monkeypatch, seed=0, epoch=0):
    """The image ids each (rank, worker) stream gives in one epoch."""
    keys = []
    for rank in range(world):
        stream = _key_stream(shards, counts, seed=seed, rank=rank, world_size=world,
                             images_per_batch=world)  # fmt: skip
        for worker in range(workers):
            _fake_worker(monkeypatch, worker, workers)
            lo, hi = stream.stream_range(*stream.layout(worker, workers)[:2])
            got = _keys(stream, (epoch + 1) * (hi - lo))
            keys.append(got[epoch * (hi - lo) :])
    return keys


def test_an_epoch_gives_every_sample_once_over_ranks_and_workers(tmp_path, monkeypatch):
    paths, samples = write_sa1b_shards(tmp_path, {"sa_000000": 5, "sa_000001": 2, "sa_000002": 4})
    shards, everything = [str(p) for p in paths], sorted(s["image_id"] for s in samples)
    counts = shard_sample_counts(shards)
    assert counts == [5, 2, 4]
    for world, workers in ((1, 1), (2, 2), (3, 1), (1, 3)):
        per_stream = _epoch_of_every_stream(shards, counts, world, workers, monkeypatch)
        flat = [k for keys in per_stream for k in keys]
        assert sorted(flat) == everything, (world, workers)  # none twice, none skipped
        assert max(map(len, per_stream)) - min(map(len, per_stream)) <= 1
    # Reshuffled per epoch from the seed: the same set, in another order of shards.
    epochs = []
    for epoch in range(4):
        per_stream = _epoch_of_every_stream(shards, counts, 2, 2, monkeypatch, epoch=epoch)
        epochs.append([k for keys in per_stream for k in keys])
    assert all(sorted(e) == everything for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    other_seed = _epoch_of_every_stream(shards, counts, 2, 2, monkeypatch, seed=1)
    assert sorted(k for keys in other_seed for k in keys) == everything


def test_dataloader_workers_split_an_epoch_between_them(tmp_path):
    """Two processes (as ranks) x two real data-loader workers, one sample per batch: 12 samples
    are 4 streams of 3, so 6 batches per process are exactly one epoch."""
    paths, samples = write_sa1b_shards(tmp_path, {"sa_000000": 5, "sa_000001": 4, "sa_000002": 3})
    shards = [str(p) for p in paths]
    seen = []
    for rank in range(2):
        stream = _key_stream(shards, [5, 4, 3], rank=rank, world_size=2, images_per_batch=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=1, num_workers=2,
                                             collate_fn=list, timeout=60)  # fmt: skip
        seen += [k for batch in itertools.islice(loader, 6) for k in batch]
    assert sorted(seen) == sorted(s["image_id"] for s in samples)


def test_more_streams_than_samples_is_a_clear_error(tmp_path):
    paths, _ = write_sa1b_shards(tmp_path, {"sa_000000": 2})
    stream = _key_stream([str(paths[0])], [2])
    with pytest.raises(ValueError, match="fewer than the 3 streams"):
        next(stream.positions(0, 3))


# ------------------------------------------------------------------------------------- resume
def _batches(stream, monkeypatch, workers, iterations):
    """What a DataLoader with ``workers`` workers yields: batch i from worker i % workers."""
    iters = []
    for w in range(workers):
        _fake_worker(monkeypatch, w, workers)
        it = iter(stream)
        iters.append(itertools.chain([next(it)], it))  # the worker info is read on the 1st next
    return [[next(iters[i % workers]) for _ in range(stream.batch_size)] for i in range(iterations)]


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_continues_exactly_without_reading_what_was_done(tmp_path, monkeypatch, workers):
    paths, _ = write_sa1b_shards(tmp_path, {"sa_000000": 3, "sa_000001": 4, "sa_000002": 3})
    shards = [str(p) for p in paths]
    counts = shard_sample_counts(shards)
    mapper = _mapper()

    def stream():
        return SA1BShardStream(shards, counts, mapper, seed=5, images_per_batch=2)

    def ids(batches):
        return [[d["image_id"] for d in b] for b in batches]

    full = _batches(stream(), monkeypatch, workers, 8)  # 16 samples: into the 2nd epoch
    resumed = stream()
    resumed.start_at(3 * 2)  # after iteration 2, as --resume from model_0000002.pth
    again = _batches(resumed, monkeypatch, workers, 5)
    assert ids(again) == ids(full[3:])
    assert all(_same(a, b) for ba, bb in zip(full[3:], again) for a, b in zip(ba, bb))
    with pytest.raises(ValueError, match="multiple of SOLVER.IMS_PER_BATCH"):
        resumed.start_at(3)
    if workers == 2:
        return
    # One stream: positions 0-5 were done. The first shard of the epoch (<= 4 samples) is never
    # opened, and no member of a sample done before the position is read.
    first = shards[epoch_order(len(shards), 5, 0)[0]]
    os.rename(first, first + ".gone")
    read = []
    real_read = sa1b_shards._read
    monkeypatch.setattr(sa1b_shards, "_read", lambda f, m: read.append(m.name) or real_read(f, m))
    resumed = stream()
    resumed.start_at(6)
    assert ids(_batches(resumed, monkeypatch, 1, 2)) == ids(full[3:5])  # the rest of epoch 0
    done = {d["image_id"] for b in full[:3] for d in b}
    assert len(read) == 8 and not {name.split(".")[0] for name in read} & done


# --------------------------------------------------------------------------------- downscale
@pytest.mark.parametrize("orientation", [None, 6])
def test_downscale_reads_the_masks_through_the_same_resize(tmp_path, orientation):
    """On-the-fly downscale (JPEG decoded at 1/2, then resized to the shortest edge 96) gives
    what the mapper gives on a pre-downscaled sample: that image (lossless PNG) and every mask
    resized with PIL NEAREST and encoded again; also for an EXIF-rotated JPEG (orientation 6:
    stored 240 x 360, masks on the upright 360 x 240)."""
    s = write_sample(tmp_path / "x", "sa_1", 240, 360, num_masks=8, exif_orientation=orientation)
    members = [(Path(s[k]).name, Path(s[k]).read_bytes()) for k in ("file_name", "annotation_file")]
    d = next(read_shard(str(pack(tmp_path / "s.tar", members)), 0, 1))
    (h, w), (small_h, small_w) = ((360, 240), (144, 96)) if orientation else ((240, 360), (96, 144))
    on_the_fly = SA1BDatasetMapper(_cfg(**{"DATASETS.SA1B.SHARDS": "x"}), is_train=True)
    assert on_the_fly.downscale_to == (96, 256)
    image, (resize,) = on_the_fly._decode(io.BytesIO(d["image_bytes"]))
    assert image.shape == (small_h, small_w, 3) and (resize.h, resize.w) == (h, w)
    full = read_image(s["file_name"], format="RGB")  # EXIF applied
    assert not np.array_equal(image, resize.apply_image(full))  # decoded at 1/2, not at full size
    ref = tmp_path / "ref"
    ref.mkdir()
    Image.fromarray(image).save(ref / "sa_1.png")
    small = np.stack([
        np.asarray(Image.fromarray(m.astype(np.uint8)).resize((small_w, small_h), Image.NEAREST))
        for m in s["masks"]
    ]) > 0  # fmt: skip
    record = {"annotations": [{"segmentation": seg} for seg in encode(small)]}
    (ref / "sa_1.json").write_text(json.dumps(record))
    plain = _mapper()
    assert plain.downscale_to is None
    for seed in range(3):
        np.random.seed(seed)
        a = on_the_fly(d)
        np.random.seed(seed)
        b = plain({"file_name": str(ref / "sa_1.png"), "annotation_file": str(ref / "sa_1.json")})
        assert _same(a, b) and a["masks"].any(), seed
        assert (a["height"], a["width"]) == (h, w)  # the original (upright) size


def test_downscale_changes_nothing_when_no_scaled_decoding_applies(tmp_path):
    paths, _ = write_sa1b_shards(tmp_path, {"sa_000000": 1}, height=120, width=180)
    d = next(read_shard(str(paths[0]), 0, 1))
    on = SA1BDatasetMapper(_cfg(**{"DATASETS.SA1B.SHARDS": "x"}), is_train=True)
    off = SA1BDatasetMapper(_cfg(**{"DATASETS.SA1B.SHARDS": "x", "DATASETS.SA1B.DOWNSCALE": False}),
                            is_train=True)  # fmt: skip
    assert on.downscale_to and off.downscale_to is None
    for seed in range(3):
        np.random.seed(seed)
        a = on(d)
        np.random.seed(seed)
        assert _same(a, off(d))


# ------------------------------------------------------------------------------- bad shards
def _members(sample_dicts):
    out = []
    for s in sample_dicts:
        out.append((Path(s["file_name"]).name, Path(s["file_name"]).read_bytes()))
        out.append((Path(s["annotation_file"]).name, Path(s["annotation_file"]).read_bytes()))
    return out


@pytest.mark.timeout(60)
def test_bad_shards_and_members_are_logged_and_skipped(tmp_path, caplog):
    _, samples = write_sa1b_shards(tmp_path, {"sa_000000": 8})
    good = _members(samples)  # sa_1.jpg, sa_1.json, ..., sa_8.json
    bad = tmp_path / "bad"
    bad.mkdir()
    broken_jpeg = (good[4][0], good[4][1][:200] + b"\0" * 50)  # sa_3.jpg: corrupt data
    broken_json = (good[7][0], b'{"annotations": [')  # sa_4.json: not JSON
    shards = {
        "truncated": pack(bad / "truncated.tar", good[:6]),  # cut below, inside sa_3.json
        "unpaired": pack(bad / "unpaired.tar", good[:3] + good[4:6]),  # sa_2.jpg alone
        "corrupt": pack(bad / "corrupt.tar", [*good[:4], broken_jpeg, *good[5:7], broken_json]),
        "header": pack(bad / "header.tar", good[:6]),  # a damaged header after sa_2
        "not_a_tar": bad / "not_a_tar.tar",
    }  # fmt: skip
    with tarfile.open(shards["truncated"]) as tar:
        cut = tar.getmember("sa_3.json").offset_data + 100
    shards["truncated"].write_bytes(shards["truncated"].read_bytes()[:cut])
    with open(shards["header"], "r+b") as f:  # overwrite the name of the 5th member's header
        raw = f.read()
        f.seek(raw.index(b"sa_3.jpg"))
        f.write(b"\xff" * 8)
    shards["not_a_tar"].write_bytes(b"this is not a tar file" * 10)
    paths = [str(p) for p in shards.values()]
    counts = shard_sample_counts(paths)
    assert counts == [3, 3, 4, 2, 0]
    logs = caplog.text
    assert "truncated.tar: unreadable after member sa_3.json" in logs
    assert "header.tar: unreadable after member sa_2.json (ReadError: invalid tar header" in logs
    assert "not_a_tar.tar: not a readable tar file" in logs

    caplog.clear()
    stream = SA1BShardStream(paths, counts, _mapper(), seed=0, images_per_batch=1)
    with caplog.at_level(logging.WARNING):
        out = _keys(stream, sum(counts))
    # Every position gives a sample; the bad ones are the next good sample again.
    assert len(out) == sum(counts) and all(o["masks"].shape[0] > 0 for o in out)
    used = {o["image_id"] for o in out}
    assert used <= {"sa_1", "sa_2", "sa_3"} and "sa_3" in used  # sa_3 of "unpaired" only
    logs = caplog.text
    assert "truncated.tar: member sa_3.json is truncated (100 of" in logs
    assert "unpaired.tar: member sa_2.jpg has no .json" in logs
    assert "corrupt.tar:sa_3.jpg: cannot read the image" in logs
    assert "corrupt.tar:sa_4.json: cannot read the annotation JSON" in logs


def test_a_huge_member_is_refused_from_its_header(tmp_path, monkeypatch, caplog):
    _, samples = write_sa1b_shards(tmp_path, {"sa_000000": 2})
    path = pack(tmp_path / "big.tar", _members(samples))
    monkeypatch.setattr(sa1b_shards, "MAX_MEMBER_BYTES", 1000)  # the JSONs are larger
    read = []
    monkeypatch.setattr(sa1b_shards, "_read", lambda f, m: read.append(m) or b"")
    got = list(read_shard(str(path), 0, 2))
    assert all("more than the 1000 a sample member may have" in d["bad_sample"] for d in got)
    assert read == []


def test_a_changed_shard_keeps_the_positions(tmp_path, caplog):
    paths, _ = write_sa1b_shards(tmp_path, {"sa_000000": 2})
    with caplog.at_level(logging.WARNING):
        got = list(read_shard(str(paths[0]), 1, 4))  # counted 4, holds 2
    assert [("bad_sample" in d) for d in got] == [False, True, True]
    assert "holds fewer samples than when it was counted" in caplog.text


# --------------------------------------------------------------------------- counts, loader
def test_counts_are_cached_and_recounted_when_a_shard_changes(tmp_path, monkeypatch):
    paths, _ = write_sa1b_shards(tmp_path, {"sa_000000": 2, "sa_000001": 3})
    shards, cache = [str(p) for p in paths], str(tmp_path / "out" / "sa1b_shards.json")
    assert shard_sample_counts(shards, cache) == [2, 3]
    scanned = []
    real_scan = sa1b_shards.scan_shard
    monkeypatch.setattr(sa1b_shards, "scan_shard", lambda s: scanned.append(s) or real_scan(s))
    assert shard_sample_counts(shards, cache) == [2, 3] and scanned == []
    with tarfile.open(paths[1], "a") as tar:  # one more sample
        add_member(tar, "sa_99.jpg", b"x")
        add_member(tar, "sa_99.json", b"{}")
    assert shard_sample_counts(shards, cache) == [2, 4] and scanned == [shards[1]]


def test_loader_from_config(tmp_path):
    paths, _ = write_sa1b_shards(tmp_path, {"sa_000000": 3, "sa_000001": 3})
    cfg = _cfg(**{"DATASETS.SA1B.SHARDS": str(tmp_path), "OUTPUT_DIR": str(tmp_path / "out")})
    loader = build_shard_train_loader(cfg, SA1BDatasetMapper(cfg, is_train=True))
    assert loader.resumable_sampler.total == 6 and loader.data_seed == cfg.SEED == 0
    batch = next(iter(loader))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH and batch[0]["image"].shape == (3, 64, 64)
    assert (tmp_path / "out" / "sa1b_shards.json").is_file()
    other = cfg.clone()
    other.merge_from_list(["DATASETS.TRAIN", "('x',)"])
    with pytest.raises(ValueError, match="replaces the dataset 'sa1b_train'"):
        build_shard_train_loader(other, None)


def test_webdataset_is_imported_only_when_shards_are_read(monkeypatch):
    for module in ("sa1b_shards", "shard_stream", "mapper"):
        tree = ast.parse((REPO / "pixelclip" / "data" / f"{module}.py").read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [
            getattr(n, "module", None) or "" for n in top
        ]
        assert not any("webdataset" in name for name in names), module
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[shards\]'"):
        list_shards("x.tar")


@pytest.mark.slow
def test_the_package_imports_without_webdataset():
    code = (
        "import sys; sys.modules['webdataset'] = None\n"
        "import pixelclip, pixelclip.data.shard_stream, pixelclip.engine.resume\n"
        "from pixelclip.data.sa1b_shards import list_shards\n"
        "try:\n    list_shards('x.tar')\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install -e '.[shards]'" in result.stdout


def test_bad_positions_take_the_next_good_sample_reproducibly(tmp_path, caplog):
    _, samples = write_sa1b_shards(tmp_path, {"sa_000000": 5})
    members = _members(samples)
    for i in (2, 4):  # sa_2.jpg and sa_3.jpg: corrupt
        members[i] = (members[i][0], b"\xff\xd8 not a JPEG")
    path = str(pack(tmp_path / "bad.tar", members))

    def stream():
        return SA1BShardStream([path], [5], _mapper(), seed=3, images_per_batch=1)

    with caplog.at_level(logging.WARNING):
        full = _keys(stream(), 5)
    assert [o["image_id"] for o in full] == ["sa_1", "sa_4", "sa_4", "sa_4", "sa_5"]
    assert "bad.tar:sa_2.jpg: cannot read the image" in caplog.text
    # Each position has its own augmentation, also when it repeats a sample.
    assert not _same(full[1], full[3]) and not _same(full[2], full[3])
    resumed = stream()
    resumed.start_at(2)  # inside the run of bad positions
    again = _keys(resumed, 3)
    assert all(_same(a, b) for a, b in zip(again, full[2:]))


def test_a_repeated_member_and_a_lone_json_are_bad_samples_of_their_own(tmp_path):
    _, samples = write_sa1b_shards(tmp_path, {"sa_000000": 2})
    (jpg1, json1), (jpg2, json2) = zip(*[iter(_members(samples))] * 2)
    members = [jpg1, jpg1, ("notes.txt", b"x"), json1, json2, jpg2, ("sa_9.json", b"{}")]
    path = pack(tmp_path / "odd.tar", members)
    assert scan_shard(str(path)) == sa1b_shards.ShardScan(4)
    got = list(read_shard(str(path), 0, 4))
    assert got[0]["bad_sample"].endswith("member sa_1.jpg has no .json before the next sa_1.jpg")
    assert "bad_sample" not in got[1] and got[1]["image_id"] == "sa_1"
    assert "bad_sample" not in got[2] and got[2]["image_id"] == "sa_2"  # JSON before its image
    assert got[3]["bad_sample"].endswith("odd.tar: member sa_9.json has no image")


def _train(out: Path, shards: Path, *extra: str) -> str:
    """tools/train_net.py, one CPU process with two data-loader workers; killed on a timeout."""
    config = REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"
    overrides = {"OUTPUT_DIR": out, "DATASETS.SA1B.SHARDS": shards, "SOLVER.MAX_ITER": 6,
                 "SOLVER.CHECKPOINT_PERIOD": 3, "DATASETS.TEST": "()",
                 "DATALOADER.NUM_WORKERS": 2}  # fmt: skip
    argv = [sys.executable, str(REPO / "tools" / "train_net.py"), *extra, "--config-file",
            str(config), *(str(v) for kv in overrides.items() for v in kv)]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=60)
    assert proc.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_training_with_workers_resumes_to_the_same_weights(tmp_path):
    """Through tools/train_net.py with two data-loader workers: a run resumed from the checkpoint
    of iteration 2 ends with the uninterrupted run's weights, bit for bit."""
    write_sa1b_shards(tmp_path / "shards", {f"sa_00000{i}": 3 for i in range(4)}, 80, 120)
    log = _train(tmp_path / "full", tmp_path / "shards")
    assert "12 samples, 2 streams (1 processes x 2 workers)" in log
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000002.pth", resumed)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    log = _train(resumed, tmp_path / "shards", "--resume")
    assert "Starting training from iteration 3" in log and "data stream at image 6" in log
    a = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=True)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_the_data_seed_restored_from_a_checkpoint_reaches_the_stream(tmp_path):
    """A SEED -1 run resumes with the seed it drew: DeterministicResumeHook sets it on the stream
    (which takes the sampler's place) before the loader starts."""
    from pixelclip.engine.resume import DeterministicResumeHook

    paths, _ = write_sa1b_shards(tmp_path, {f"sa_00000{i}": 2 for i in range(4)})
    shards, counts = [str(p) for p in paths], [2] * 4
    resumed = _key_stream(shards, counts, seed=987)  # the seed this new process drew
    DeterministicResumeHook(resumed, 1, 987).load_state_dict({"data_seed": 1234})
    original = _keys(_key_stream(shards, counts, seed=1234), 24)  # 3 epochs
    assert _keys(resumed, 24) == original != _keys(_key_stream(shards, counts, seed=987), 24)
