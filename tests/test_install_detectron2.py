"""The detectron2 installer's repacking, on a small synthetic wheel shaped like sal-detectron2."""

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _load_installer():
    return load_script("tools/install_detectron2.py", "install_detectron2")


installer = _load_installer()


def _fake_source_wheel(path: Path, with_license: bool = True) -> Path:
    wheel = path / "sal_detectron2-0.7.2-cp310-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("detectron2/__init__.py", '__version__ = "0.7.2"\nVALUE = 42\n')
        z.writestr("detectron2/layers/__init__.py", "")
        z.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF binary")
        z.writestr("detectron2/model_zoo/configs/Base.yaml", "MODEL: {}\n")
        z.writestr("tools/__init__.py", "")
        z.writestr("tools/train_net.py", "print('shadow')\n")
        if with_license:
            z.writestr("sal_detectron2-0.7.2.dist-info/LICENSE", "Apache License 2.0\n")
        z.writestr("sal_detectron2-0.7.2.dist-info/METADATA", "Name: sal-detectron2\n")
        z.writestr("sal_detectron2-0.7.2.dist-info/WHEEL", "Tag: cp310-cp310-linux_x86_64\n")
        z.writestr("sal_detectron2-0.7.2.dist-info/RECORD", "")
    return wheel


def test_repack_contents_and_record(tmp_path):
    out = installer.repack(_fake_source_wheel(tmp_path), tmp_path / "out")
    assert out.name == "detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert "detectron2/__init__.py" in names
        assert "detectron2/model_zoo/configs/Base.yaml" in names  # package data kept
        assert not any("_C" in n for n in names)
        assert not any(n.startswith("tools/") for n in names)
        assert not any(n.startswith("sal_detectron2") for n in names)
        info = "detectron2-0.7.2.dist-info"
        wheel = z.read(f"{info}/WHEEL").decode()
        assert "Tag: py3-none-any" in wheel and "Root-Is-Purelib: true" in wheel
        metadata = z.read(f"{info}/METADATA").decode()
        assert "Name: detectron2\n" in metadata and "Version: 0.7.2\n" in metadata
        requires = [
            line.split(": ", 1)[1]
            for line in metadata.splitlines()
            if line.startswith("Requires-Dist")
        ]
        assert any(r.startswith("fvcore") for r in requires)
        assert any(r.startswith("iopath") for r in requires)
        assert "numpy<2" in requires
        assert z.read(f"{info}/LICENSE").decode().startswith("Apache License")
        rows = list(csv.reader(io.StringIO(z.read(f"{info}/RECORD").decode())))
        recorded = {row[0] for row in rows}
        assert recorded == names  # every file, RECORD itself included, is listed once
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert digest == "" and size == ""
                continue
            data = z.read(name)
            expected = hashlib.sha256(data).digest()
            assert digest == "sha256=" + base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
            assert int(size) == len(data)


def test_repacked_wheel_installs_with_pip(tmp_path):
    wheel = installer.repack(_fake_source_wheel(tmp_path), tmp_path / "out")
    target = tmp_path / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--target",
        str(target),
    ]
    subprocess.run(cmd + [str(wheel)], check=True, capture_output=True)
    code = (
        "import importlib.metadata as m, detectron2; "
        "print(m.version('detectron2'), detectron2.VALUE, detectron2.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    version, value, location = out.stdout.split()
    assert (version, value) == ("0.7.2", "42") and location.startswith(str(target))
    assert not (target / "tools").exists()


def test_repack_refuses_a_wheel_without_license(tmp_path):
    with pytest.raises(ValueError, match="LICENSE"):
        installer.repack(_fake_source_wheel(tmp_path, with_license=False), tmp_path / "out")
    assert not list((tmp_path / "out").glob("*"))  # nothing half-written is left


def test_repack_refuses_a_foreign_wheel(tmp_path):
    foreign = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match="detectron2"):
        installer.repack(foreign, tmp_path / "out")


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / installer.SOURCE_WHEEL_NAME).write_bytes(b"tampered")
    with pytest.raises(SystemExit, match="does not match"):
        installer.download_source_wheel(sys.executable, cache)
    assert not (cache / installer.SOURCE_WHEEL_NAME).exists()


def test_installed_detectron2_is_the_repacked_pure_python_one():
    import importlib.metadata

    import detectron2

    assert importlib.metadata.version("detectron2")
    assert not list(Path(detectron2.__file__).parent.glob("_C*.so"))
