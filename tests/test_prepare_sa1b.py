"""tools/prepare_sa1b.py (pixelclip.data.prepare_sa1b): downscaled images and masks, resumability,
verification, bad input."""

import json
import os

import data_factory
import numpy as np
import pytest
from conftest import load_script
from PIL import Image
from pycocotools import mask as mask_utils


@pytest.fixture(scope="module")
def tool():
    from pixelclip.data import prepare_sa1b

    return prepare_sa1b


def test_the_script_is_the_package_command(capsys):
    script = load_script("tools/prepare_sa1b.py", "prepare_sa1b_tool")
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0 and "--verify-existing" in capsys.readouterr().out


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    data_factory.write_sa1b_folder(root, {"sa_000000": 2, "sa_000001": 1}, 63, 50, num_masks=5)
    record = json.loads((root / "sa_000000" / "sa_1.json").read_text())
    record["annotations"][0].update(point_coords=[[10.0, 20.0]], crop_box=[0, 0, 50, 63])
    (root / "sa_000000" / "sa_1.json").write_text(json.dumps(record))
    return root


def _decode(seg):
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def test_downscales_images_and_masks(tool, src, tmp_path):
    dst = tmp_path / "dst"
    assert tool.main(["--src", str(src), "--dst", str(dst), "--factor", "2"]) == 0
    for rel in ["sa_000000/sa_1", "sa_000000/sa_2", "sa_000001/sa_3"]:
        with Image.open(dst / f"{rel}.jpg") as img:
            assert (img.height, img.width) == (32, 25)  # 63 / 2 and 50 / 2 rounded half up
        out = json.loads((dst / f"{rel}.json").read_text())
        before = json.loads((src / f"{rel}.json").read_text())
        assert (out["image"]["height"], out["image"]["width"]) == (32, 25)
        assert len(out["annotations"]) == len(before["annotations"])
        for a_out, a_in in zip(out["annotations"], before["annotations"]):
            # Independent reference: PIL's nearest resize of the full decoded mask.
            full = _decode(a_in["segmentation"]).astype(np.uint8)
            ref = np.asarray(Image.fromarray(full).resize((25, 32), Image.NEAREST)).astype(bool)
            small = _decode(a_out["segmentation"])
            np.testing.assert_array_equal(small, ref)
            assert a_out["area"] == int(ref.sum())
            if ref.any():
                ys, xs = np.nonzero(ref)
                x0, y0 = xs.min(), ys.min()
                assert a_out["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
    first = json.loads((dst / "sa_000000" / "sa_1.json").read_text())["annotations"][0]
    assert first["point_coords"] == [[10.0 * 25 / 50, 20.0 * 32 / 63]]
    assert first["crop_box"] == [0, 0, 25.0, 32.0]
    assert not list(dst.rglob("*.partial"))


def test_resume_skips_finished_images_and_redoes_missing_ones(tool, src, tmp_path, capsys):
    dst = tmp_path / "dst"
    args = ["--src", str(src), "--dst", str(dst), "--max-images", "2"]
    assert tool.main(args) == 0
    done = dst / "sa_000000" / "sa_2.json"
    stamp = done.stat().st_mtime_ns
    os.remove(dst / "sa_000000" / "sa_1.json")  # as if interrupted before the JSON rename
    assert tool.main(args) == 0
    assert "1 written, 1 already done, 0 failed" in capsys.readouterr().out
    assert done.stat().st_mtime_ns == stamp
    assert (dst / "sa_000000" / "sa_1.json").exists()
    # A damaged finished file is only noticed with --verify-existing.
    done.write_text('{"annotations": [')
    assert tool.main(args) == 0
    assert "0 written, 2 already done" in capsys.readouterr().out
    assert tool.main([*args, "--verify-existing"]) == 0
    assert "1 written, 1 already done" in capsys.readouterr().out
    json.loads(done.read_text())


def test_bad_inputs_are_reported_not_fatal(tool, src, tmp_path, capsys):
    jpg = src / "sa_000000" / "sa_2.jpg"
    jpg.write_bytes(jpg.read_bytes()[:100])  # truncated JPEG
    record = json.loads((src / "sa_000001" / "sa_3.json").read_text())
    record["annotations"][1]["segmentation"] = data_factory.encode(np.ones((1, 50, 63), bool))[0]
    (src / "sa_000001" / "sa_3.json").write_text(json.dumps(record))
    dst = tmp_path / "dst"
    assert tool.main(["--src", str(src), "--dst", str(dst), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "1 written, 0 already done, 2 failed" in out
    failed = (dst / tool.FAILED_LIST).read_text()
    assert "sa_000000/sa_2.jpg" in failed and "sa_000001/sa_3.jpg" in failed
    assert "annotation 1 has size [50, 63], the image is 63x50" in failed
    assert not (dst / "sa_000000" / "sa_2.jpg").exists()
    assert not list(dst.rglob("*.partial"))


def test_rejects_upscaling(tool, src, tmp_path):
    with pytest.raises(SystemExit):
        tool.main(["--src", str(src), "--dst", str(tmp_path / "d"), "--factor", "0.5"])
