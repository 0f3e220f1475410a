#!/usr/bin/env python3
"""Install detectron2 into the current Python environment, whatever the machine can reach.

detectron2 is not published on PyPI. This script picks one of three routes, in this order:

1. ``import detectron2`` already works: keep it, do nothing.
2. A source build was asked for (``--source`` or ``PIXELCLIP_DETECTRON2_SOURCE=1``) and GitHub is
   reachable: ``pip install`` detectron2 from its repository at a pinned commit. This compiles the
   C++/CUDA ops, which PixelCLIP does not need but other projects in the same environment may.
3. Otherwise: download the wheel ``sal-detectron2==0.7.2`` from the package registry (it carries
   upstream detectron2's pure-Python package plus a CPython-3.10-only ``_C`` binary and a
   top-level ``tools`` package), verify its sha256, and repack it -- standard library only -- into a
   pure-Python wheel named ``detectron2`` (tag ``py3-none-any``) without the binary and without
   ``tools`` (which would shadow this repository's ``tools``). The repacked wheel declares the
   dependencies upstream detectron2 declares (including fvcore and iopath, which the source wheel
   omits), is cached, and is installed with pip.

Only the standard library is used, so this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SOURCE_WHEEL_REQUIREMENT = "sal-detectron2==0.7.2"
SOURCE_WHEEL_NAME = "sal_detectron2-0.7.2-cp310-none-any.whl"
SOURCE_WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
VERSION = "0.7.2"
REPACKED_WHEEL_NAME = f"detectron2-{VERSION}-py3-none-any.whl"
# Upstream detectron2 main of 2024-04-17, the code the sal-detectron2 wheel was built from.
DETECTRON2_REPO = "https://github.com/facebookresearch/detectron2.git"
DETECTRON2_COMMIT = "a59f0563"
SOURCE_ENV_VAR = "PIXELCLIP_DETECTRON2_SOURCE"

# What upstream detectron2's setup.py declares (fvcore/iopath pins included), plus numpy<2, which
# the source wheel declares and detectron2's SemSegEvaluator needs.
REQUIRES_DIST = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "black",
    "packaging",
    "numpy<2",
]


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def detectron2_importable(python: str) -> bool:
    return subprocess.run([python, "-c", "import detectron2"], capture_output=True).returncode == 0


def github_reachable(timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_hash(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _keep(name: str) -> bool:
    """Which members of the source wheel go into the repacked one."""
    top = name.split("/", 1)[0]
    if top != "detectron2":
        return False  # the top-level ``tools`` package and the old .dist-info
    base = name.rsplit("/", 1)[-1]
    return not (base.startswith("_C") and (base.endswith(".so") or base.endswith(".pyd")))


def _metadata(summary: str) -> str:
    lines = [
        "Metadata-Version: 2.1",
        "Name: detectron2",
        f"Version: {VERSION}",
        f"Summary: {summary}",
        "Home-page: https://github.com/facebookresearch/detectron2",
        "Author: FAIR",
        "License: Apache-2.0",
        "Requires-Python: >=3.8",
        "License-File: LICENSE",
    ]
    lines += [f"Requires-Dist: {req}" for req in REQUIRES_DIST]
    return "\n".join(lines) + "\n"


def repack(source: Path, out_dir: Path) -> Path:
    """Repack ``source`` (an sal-detectron2 wheel) into a pure-Python ``detectron2`` wheel.

    Args:
        source: path of the downloaded wheel.
        out_dir: folder that receives ``detectron2-<version>-py3-none-any.whl``.

    Returns:
        The path of the written wheel. It is written to a temporary name first and renamed, so a
        cached wheel is never half-written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / REPACKED_WHEEL_NAME
    dist_info = f"detectron2-{VERSION}.dist-info"
    record: list[str] = []
    with zipfile.ZipFile(source) as src:
        names = src.namelist()
        if not any(n.startswith("detectron2/") for n in names):
            raise ValueError(f"{source}: no 'detectron2/' package inside; is this the right wheel?")
        licenses = [n for n in names if n.endswith(".dist-info/LICENSE")]
        if not licenses:
            raise ValueError(
                f"{source}: no LICENSE in its .dist-info; refusing to repack without it"
            )
        tmp = tempfile.NamedTemporaryFile(dir=out_dir, suffix=".tmp", delete=False)
        tmp.close()
        try:
            with zipfile.ZipFile(tmp.name, "w", compression=zipfile.ZIP_DEFLATED) as dst:

                def put(name: str, data: bytes) -> None:
                    dst.writestr(name, data)
                    record.append(f"{name},{_record_hash(data)},{len(data)}")

                for name in names:
                    if name.endswith("/") or not _keep(name):
                        continue
                    put(name, src.read(name))
                summary = "Detectron2 (pure-Python repack of sal-detectron2 0.7.2; no compiled ops)"
                put(f"{dist_info}/LICENSE", src.read(licenses[0]))
                put(f"{dist_info}/METADATA", _metadata(summary).encode())
                wheel = (
                    "Wheel-Version: 1.0\nGenerator: pixelclip install_detectron2\n"
                    "Root-Is-Purelib: true\nTag: py3-none-any\n"
                )
                put(f"{dist_info}/WHEEL", wheel.encode())
                put(f"{dist_info}/top_level.txt", b"detectron2\n")
                record.append(f"{dist_info}/RECORD,,")
                dst.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
            os.replace(tmp.name, target)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)
    return target


def download_source_wheel(python: str, cache: Path) -> Path:
    wheel = cache / SOURCE_WHEEL_NAME
    if not wheel.exists():
        log(f"downloading {SOURCE_WHEEL_REQUIREMENT} from the package registry")
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", "3.10", "--platform", "manylinux2014_x86_64"]
        cmd += ["-d", str(cache), SOURCE_WHEEL_REQUIREMENT]
        subprocess.run(cmd, check=True)
    digest = sha256_of(wheel)
    if digest != SOURCE_WHEEL_SHA256:
        wheel.unlink()
        raise SystemExit(
            f"{wheel}: sha256 {digest} does not match the expected {SOURCE_WHEEL_SHA256}; "
            "the file was removed, run again to re-download"
        )
    return wheel


def install_from_source(python: str) -> None:
    url = f"git+{DETECTRON2_REPO}@{DETECTRON2_COMMIT}"
    log(f"building detectron2 from source: {url}")
    subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", url], check=True)


def install_repacked(python: str, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / REPACKED_WHEEL_NAME
    if not target.exists():
        target = repack(download_source_wheel(python, cache), cache)
        log(f"repacked into {target}")
    else:
        log(f"using cached {target}")
    subprocess.run([python, "-m", "pip", "install", str(target)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to install into")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelclip",
        help="where the downloaded and the repacked wheels are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--source",
        action="store_true",
        default=os.environ.get(SOURCE_ENV_VAR, "") not in ("", "0"),
        help=f"build from GitHub at {DETECTRON2_COMMIT} if reachable (or set {SOURCE_ENV_VAR}=1)",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even if importable")
    parser.add_argument(
        "--repack-only",
        nargs=2,
        metavar=("SOURCE_WHEEL", "OUT_DIR"),
        help="only repack a given wheel into OUT_DIR (no download, no install)",
    )
    args = parser.parse_args(argv)

    if args.repack_only:
        print(repack(Path(args.repack_only[0]), Path(args.repack_only[1])))
        return 0
    if not args.force and detectron2_importable(args.python):
        log("detectron2 is already importable; keeping it")
        return 0
    if args.source:
        if github_reachable():
            install_from_source(args.python)
            return 0
        log("source build asked for, but github.com is not reachable: using the repacked wheel")
    install_repacked(args.python, args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
