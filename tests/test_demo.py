"""demo/demo.py end to end with a tiny random model: image folders with a corrupt file, a single
image, a video, logits files, usage errors and a complete --help."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, load_script
from detectron2.modeling import build_model
from PIL import Image
from test_meta_arch import tiny_cfg

from pixelclip.data.benchmarks import voc_colormap

DEMO = REPO / "demo" / "demo.py"
OPTIONS = (
    "--config-file", "--weights", "--input", "--video-input", "--output", "--vocabulary",
    "--save-logits", "--opacity", "--device", "--max-frames", "--video-format", "--opts",
)  # fmt: skip
# INPUT.MIN_SIZE_TEST 0: no test-time resize, so the model's own output is the reference.
SETTINGS = {"INPUT.MIN_SIZE_TEST": 0}


def load_demo():
    return load_script(DEMO, "pixelclip_demo_under_test")


demo = load_demo()


def blocks(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(8, 0).repeat(8, 1)[:height, :width])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(tiny_cfg(**SETTINGS).dump())
    return str(path)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(blocks(0, 48, 64)).save(folder / "a.png")
    Image.fromarray(blocks(1, 56, 40)).save(folder / "b.png")
    (folder / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def is_png(path, width, height) -> bool:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size == (width, height) and im.mode == "RGB"


def test_help_lists_every_option_with_text():
    result = subprocess.run(
        [sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in OPTIONS:
        assert option in result.stdout, option
    assert '"|"' in result.stdout and "synonyms" in result.stdout  # the vocabulary syntax
    parser = demo.build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help or len(a.help) < 15]
    assert undocumented == []
    assert {o for a in parser._actions for o in a.option_strings} == set(OPTIONS) | {"-h", "--help"}


def test_folder_end_to_end_with_a_corrupt_image(config_file, image_folder, tmp_path, caplog):
    out = tmp_path / "out"
    argv = ["--config-file", config_file, "--input", str(image_folder), "--output", str(out)]
    argv += ["--vocabulary", "cat, dog | puppy, grass", "--save-logits", "--opacity", "0.5"]
    torch.manual_seed(0)
    assert demo.main(argv) == 1  # one unreadable image
    assert "c_corrupt.png" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [
        "a.npy",
        "a.png",
        "b.npy",
        "b.png",
        "classes.json",
    ]
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog, puppy", "grass"]
    assert is_png(out / "a.png", 64, 48) and is_png(out / "b.png", 40, 56)

    # The logits are the model's own scores (same seed -> same random weights).
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**SETTINGS)).eval()
    model.set_vocabulary(["cat", "dog, puppy", "grass"])
    for name, seed, (h, w) in (("a", 0, (48, 64)), ("b", 1, (56, 40))):
        image = torch.from_numpy(blocks(seed, h, w)).permute(2, 0, 1).contiguous()
        want = model([{"image": image}])[0]["sem_seg"].numpy()
        logits = np.load(out / f"{name}.npy")
        assert logits.dtype == np.float32 and logits.shape == (3, h, w)
        np.testing.assert_allclose(logits, want, atol=1e-5)
        # The overlay is the image blended with the colour of each pixel's argmax class.
        overlay = np.asarray(Image.open(out / f"{name}.png")).astype(float)
        colors = np.array(voc_colormap(4)[1:], float)[want.argmax(0)]  # VOC without black
        blend = 0.5 * blocks(seed, h, w) + 0.5 * colors
        assert np.median(np.abs(overlay - blend)) < 8


def test_single_image_output_file_and_summary(config_file, image_folder, tmp_path, capsys):
    target = tmp_path / "result.png"
    argv = ["--config-file", config_file, "--input", str(image_folder / "a.png")]
    argv += ["--vocabulary", "sky, tree"]
    assert demo.main([*argv, "--output", str(target)]) == 0
    assert is_png(target, 64, 48)
    capsys.readouterr()
    assert demo.main(argv) == 0  # no --output: the class areas are printed
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(str(image_folder / "a.png"))
    shares = [float(part.split()[-1].rstrip("%")) for part in line.split(": ")[1].split(", ")]
    assert abs(sum(shares) - 100.0) < 0.2


def test_globs_missing_files_and_pt_logits(config_file, image_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["--config-file", config_file, "--output", str(out), "--vocabulary", "sky, tree"]
    inputs = [str(image_folder / "b*.png"), str(image_folder / "missing.png")]
    assert demo.main([*argv, "--input", *inputs, "--save-logits", "pt"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["b.png", "b.pt", "classes.json"]
    logits = torch.load(out / "b.pt", weights_only=True)
    assert logits.shape == (2, 56, 40) and logits.dtype == torch.float32


def write_video(path, frames: int, fourcc: str = "MJPG") -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5.0, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.ascontiguousarray(blocks(i, 48, 64)[:, :, ::-1]))
    writer.release()


def read_video(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.mark.parametrize("video_format, max_frames, expected", [("avi", 0, 5), ("mp4", 3, 3)])
def test_video_end_to_end(config_file, tmp_path, video_format, max_frames, expected):
    video = tmp_path / "clip.avi"
    write_video(video, 5)
    out = tmp_path / "out"
    argv = ["--config-file", config_file, "--video-input", str(video), "--output", str(out)]
    argv += ["--vocabulary", "sky, tree", "--save-logits", "--video-format", video_format]
    argv += ["--max-frames", str(max_frames)]
    torch.manual_seed(0)
    assert demo.main(argv) == 0
    frames = read_video(out / f"clip.{video_format}")
    assert len(frames) == expected and all(f.shape == (48, 64, 3) for f in frames)
    logits = sorted((out / "clip_logits").iterdir())
    assert [p.name for p in logits] == [f"{i:06d}.npy" for i in range(expected)]

    # Frames are segmented in RGB and written back in BGR: compare with the model's own scores
    # on the decoded input frame and with a hand-made blend of the class colours.
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**SETTINGS)).eval()
    model.set_vocabulary(["sky", "tree"])
    rgb = np.ascontiguousarray(read_video(video)[0][:, :, ::-1])
    want = model([{"image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous()}])[0]["sem_seg"]
    np.testing.assert_allclose(np.load(logits[0]), want.numpy(), atol=1e-5)
    colors = np.array(voc_colormap(3)[1:], float)[want.argmax(0).numpy()]
    blend = 0.4 * rgb + 0.6 * colors  # default --opacity 0.6
    assert np.median(np.abs(frames[0][:, :, ::-1] - blend)) < 12  # lossy codecs


def test_usage_and_setup_errors(config_file, image_folder, tmp_path, capsys):
    base = ["--config-file", config_file]
    for argv in (
        [*base, "--input", str(image_folder)],  # a folder needs --output
        [*base, "--video-input", "v.avi"],  # a video needs --output
        [*base, "--input", "a.png", "--opacity", "1.5"],
        [*base, "--input", "a.png", "--save-logits", "npz", "--output", "o"],
        [*base, "--input", "a.png", "--output", "o", "--opts", "MODEL.DEVICE"],
    ):
        with pytest.raises(SystemExit) as info:
            demo.main(argv)
        assert info.value.code == 2, argv
    capsys.readouterr()
    one = ["--input", str(image_folder / "a.png")]
    assert demo.main(["--config-file", str(tmp_path / "nope.yaml"), *one]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert demo.main([*base, *one, "--vocabulary", "classes.json"]) == 2
    assert "classes.json" in capsys.readouterr().err
    assert demo.main([*base, *one]) == 2  # no vocabulary anywhere
    assert "--vocabulary" in capsys.readouterr().err
    video = ["--video-input", str(tmp_path / "none.avi"), "--output", str(tmp_path / "o")]
    assert demo.main([*base, *video, "--vocabulary", "sky"]) == 1
    assert not (tmp_path / "o").exists()
