"""SA-1B JSON writing/reading, the mask writer (pixelclip.masks) and the mask-generation CLI
(DINO and a tiny random SAM)."""

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image
from pycocotools import mask as mask_utils

from pixelclip.data.sa1b_format import (
    decode_masks,
    encode_mask,
    make_annotation,
    make_record,
    read_sa1b_json,
    write_sa1b_json,
)
from pixelclip.masks import cli
from pixelclip.masks.writer import generate_masks

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ SA-1B format
def random_masks(n=3, h=20, w=30, seed=0):
    return np.random.default_rng(seed).random((n, h, w)) > 0.6


def test_annotation_matches_pycocotools_and_numpy():
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 5:17] = True
    mask[12, 25] = True
    ann = make_annotation(mask, 7, predicted_iou=np.float32(0.5), point_coords=np.array([[1, 2]]))
    seg = ann["segmentation"]
    assert seg["size"] == [20, 30] and isinstance(seg["counts"], str)
    decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)
    assert ann["id"] == 7 and ann["area"] == 6 * 12 + 1
    assert ann["bbox"] == [5.0, 3.0, 21.0, 10.0]  # x, y, w, h of rows 3..12, columns 5..25
    assert ann["predicted_iou"] == 0.5 and ann["point_coords"] == [[1, 2]]
    json.dumps(ann)  # plain Python types only


def test_write_read_round_trip_is_atomic(tmp_path):
    masks = random_masks()
    record = make_record(1, "a.jpg", 20, 30, [make_annotation(m, i) for i, m in enumerate(masks)])
    path = tmp_path / "sub" / "a.json"
    write_sa1b_json(path, record)
    assert np.array_equal(decode_masks(read_sa1b_json(path)), masks)
    # A failing write (unserialisable value) leaves the old file intact and no temporary file.
    with pytest.raises(TypeError):
        write_sa1b_json(path, {"annotations": [object()]})
    assert read_sa1b_json(path) == record
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"image": {}}', "'annotations' list"),
        ('{"annotations": [{"segmentation": [[1, 2, 3]]}]}', r"annotations\[0\]"),
        # Malformed numbers: such a JSON from an earlier run is regenerated, not kept.
        ('{"image": {"height": "a", "width": 3}, "annotations": []}', "two positive integers"),
        ('{"annotations": [{"segmentation": {"size": [NaN, 3], "counts": "0"}}]}', "positive"),
        ("[" * 200_000 + "]" * 200_000, "not valid JSON"),  # json.load: RecursionError
        (b'{"annotations": [], "x": "\xff"}', "not valid JSON"),  # not UTF-8
    ],
)
def test_read_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=f"bad.json.*{message}"):
        read_sa1b_json(path)


def test_decode_rejects_masks_of_another_size():
    record = make_record(1, "a.jpg", 20, 31, [make_annotation(random_masks(1)[0], 0)])
    with pytest.raises(ValueError, match=r"annotations\[0\] has size \[20, 30\]"):
        decode_masks(record)


def test_encode_mask_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        encode_mask(np.zeros((2, 3, 4), dtype=bool))


# ------------------------------------------------------------------------ folder of images
@pytest.fixture
def image_folder(tmp_path):
    """3 readable images (png, RGBA png in a subfolder, jpg with EXIF rotation) + 1 corrupt."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (72, 64, 4), dtype=np.uint8)).save(root / "sub/b.PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": the stored 64x96 (h x w) image is shown as 96x64
    img = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    img.save(root / "c.jpg", exif=exif)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


EXPECTED_SIZES = {"a.json": (64, 80), "sub/b.json": (72, 64), "c.json": (96, 64)}


def written(root: Path) -> dict[str, dict]:
    return {p.relative_to(root).as_posix(): read_sa1b_json(p) for p in root.rglob("*.json")}


def check_run(root, out, capsys, caplog):
    records = written(out)
    assert sorted(records) == sorted(EXPECTED_SIZES)
    for rel, record in records.items():
        h, w = EXPECTED_SIZES[rel]
        assert (record["image"]["height"], record["image"]["width"]) == (h, w)
        assert record["image"]["file_name"] == Path(rel).stem + {"a": ".png", "b": ".PNG"}.get(
            Path(rel).stem, ".jpg"
        )
        masks = decode_masks(record)
        assert masks.shape[1:] == (h, w) and len(masks) > 0
    assert "processed 3, skipped 0, failed 1" in capsys.readouterr().out
    assert str(root / "sub" / "broken.jpg") in caplog.text
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []
    return records


def random_dino_weights(path: Path, model_name: str) -> None:
    """A random fp16 state dict for a timm ViT (shapes from the meta device: no init cost)."""
    import timm

    with torch.device("meta"):
        vit = timm.create_model(model_name, pretrained=False, num_classes=0)
    pool = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    state = {}
    for i, (k, v) in enumerate(vit.state_dict().items()):
        values = pool.roll(i * 7919).repeat(v.numel() // pool.numel() + 1)[: v.numel()]
        state[k] = (0.02 * values).view(v.shape).half()
    torch.save(state, path)


def test_cli_dino_end_to_end_and_resume(image_folder, tmp_path, capsys, caplog):
    weights = tmp_path / "dino.pth"
    # timm's own tiny test ViT (patch 16, the layout of DINO's ViT-S/16) keeps the test fast.
    random_dino_weights(weights, "test_vit")
    out = tmp_path / "masks"
    argv = ["--input", str(image_folder), "--output", str(out), "--source", "dino",
            "--dino-weights", str(weights), "--dino-model", "test_vit",
            "--dino-resolution", "64", "--num-clusters", "4", "--no-progress"]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 0
    records = check_run(image_folder, out, capsys, caplog)
    for record in records.values():
        masks = decode_masks(record)
        assert len(masks) <= 4
        assert np.array_equal(masks.sum(0), np.ones(masks.shape[1:]))  # DINO masks partition
    # Resume: everything done is skipped (the model is not even built); files stay untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert cli.main(argv) == 0
    assert "processed 0, skipped 3, failed 1" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    # A damaged JSON is regenerated; --strict turns the corrupt image into a failure exit code.
    (out / "c.json").write_text('{"annotations": [')
    assert cli.main([*argv, "--strict"]) == 1
    assert "processed 1, skipped 2, failed 1" in capsys.readouterr().out
    assert read_sa1b_json(out / "c.json") == records["c.json"]


def tiny_sam(checkpoint=None, seed=0):
    """A Sam with every part shrunk (64-pixel input, 32 channels, one block each)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    size, dim = 64, 32
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=size,
                patch_size=16,
                embed_dim=32,
                depth=1,
                num_heads=2,
                mlp_ratio=2,
                out_chans=dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            ),  # fmt: skip
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(size // 16, size // 16),
                input_image_size=(size, size),
                mask_in_chans=4,
            ),  # fmt: skip
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer_dim=dim,
                iou_head_depth=2,
                iou_head_hidden_dim=16,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
            ),  # fmt: skip
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    return sam.eval()


# Lowered thresholds: random weights give low IoU predictions and stability scores.
SAM_OPTIONS = {"points_per_side": 3, "pred_iou_thresh": -1e3, "stability_score_thresh": 0.0}


def test_cli_sam_end_to_end_matches_the_sam_generator(
    image_folder, tmp_path, capsys, caplog, monkeypatch
):
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam(seed=1).state_dict(), checkpoint)
    # Any architecture registered in segment_anything's registry is selectable by --sam-model.
    monkeypatch.setitem(sam_model_registry, "tiny_test", tiny_sam)
    argv = ["--input", str(image_folder), "--source", "sam", "--sam-model", "tiny_test",
            "--sam-checkpoint", str(checkpoint), "--points-per-side", "3",
            "--pred-iou-thresh", "-1000", "--stability-score-thresh", "0",
            "--no-progress"]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 0
    records = check_run(image_folder, image_folder, capsys, caplog)  # JSONs next to the images
    # Independently: the same tiny SAM through segment_anything's generator, decoded by pycocotools.
    generator = SamAutomaticMaskGenerator(
        tiny_sam(checkpoint), output_mode="coco_rle", **SAM_OPTIONS
    )
    image = np.asarray(Image.open(image_folder / "a.png").convert("RGB"))
    expected = generator.generate(image)
    got = records["a.json"]["annotations"]
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        assert g["segmentation"]["counts"] == e["segmentation"]["counts"]
        assert np.array_equal(
            mask_utils.decode({"size": g["segmentation"]["size"],
                               "counts": g["segmentation"]["counts"].encode()}),
            mask_utils.decode(e["segmentation"]),
        )  # fmt: skip
        # COCO's box (pycocotools.toBbox, width = x1 - x0 + 1); SAM's own generator reports
        # one pixel less (x1 - x0), so compare with the box computed here.
        ys, xs = np.nonzero(mask_utils.decode(e["segmentation"]))
        box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert g["area"] == e["area"] and g["bbox"] == [float(v) for v in box]
        assert g["predicted_iou"] == pytest.approx(e["predicted_iou"])
        assert g["stability_score"] == pytest.approx(e["stability_score"])


def test_max_side_downscales_for_generation_and_stores_full_size(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8)).save(path)
    seen = []

    def left_columns(image):
        seen.append(image.shape)
        mask = np.zeros(image.shape[:2], dtype=bool)
        mask[:, :7] = True
        return [{"segmentation": mask}, {"segmentation": np.zeros_like(mask)}]

    counts = generate_masks([path], left_columns, [tmp_path / "big.json"], max_side=25,
                            progress=False)  # fmt: skip
    assert counts == (1, 0, 0) and seen == [(10, 25, 3)]
    masks = decode_masks(read_sa1b_json(tmp_path / "big.json"))
    assert masks.shape == (1, 40, 100)  # the empty mask is dropped; stored at the image size
    # Nearest upsampling: column j copies source column floor(j * 25 / 100) < 7, i.e. j < 28.
    assert np.array_equal(masks[0], np.broadcast_to(np.arange(100) < 28, (40, 100)))


@pytest.mark.timeout(30)
def test_non_utf8_names_and_images_without_masks_are_reported(tmp_path, capsys, caplog):
    import hashlib
    import os

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(root / "ok.png")
    # A black image for which the mask function finds nothing; its name is not valid UTF-8.
    black = os.path.join(os.fsencode(root), b"\xff.png")
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(os.fsdecode(black), format="PNG")
    os.mkfifo(os.path.join(os.fsencode(root), b"\xfe.jpg"))  # never opened (it would block)

    def brightness_masks(image):
        return [{"segmentation": image[..., 0] > 0}] if image.any() else []

    out = tmp_path / "masks"
    argv = ["--input", str(root), "--output", str(out), "--source", "dino", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="pixelclip.masks"):
        assert cli.main(argv, mask_fn=brightness_masks) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "processed 2, skipped 0, failed 0, no masks 1" in lines
    assert "images without masks (the training loader skips them): \\xff.png" in lines
    assert "no masks for" in caplog.text and "\\xff.png" in caplog.text
    assert "left out 1 entries named like images that are not regular files" in caplog.text
    record = read_sa1b_json(out / os.fsdecode(b"\xff.json"))
    assert record["annotations"] == [] and record["image"]["file_name"] == os.fsdecode(b"\xff.png")
    # The id hashes the file name's own bytes.
    assert record["image"]["image_id"] == int(hashlib.sha1(b"\xff.png").hexdigest()[:13], 16)
    assert len(read_sa1b_json(out / "ok.json")["annotations"]) == 1
    # A resumed run still reports the image without masks.
    assert cli.main(argv, mask_fn=brightness_masks) == 0
    assert "processed 0, skipped 2, failed 0, no masks 1" in capsys.readouterr().out


def test_every_image_failing_is_an_error_exit(tmp_path, capsys):
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    argv = ["--input", str(tmp_path), "--source", "dino", "--dino-weights", str(tmp_path / "x.jpg")]
    assert cli.main([*argv, "--no-progress"]) == 1
    assert "processed 0, skipped 0, failed 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--source", "sam"], "needs an existing --sam-checkpoint"),
        (["--source", "dino", "--dino-weights", "nowhere.pth"], "needs an existing --dino-weights"),
        (["--source", "sam", "--sam-model", "vit_x"], "invalid choice"),
    ],
)
def test_usage_errors(image_folder, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--input", str(image_folder), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_clashing_outputs_and_empty_folder_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--input", str(tmp_path), "--source", "dino"])
    assert "no jpg/jpeg/png/webp images" in capsys.readouterr().err
    for name in ("a.jpg", "a.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with pytest.raises(SystemExit):
        cli.main(["--input", str(tmp_path), "--source", "dino"])
    assert "would both write" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    """The script in tools/ (a thin wrapper of pixelclip.masks.cli.main)."""
    tool = load_script("tools/generate_masks.py", "generate_masks_tool")
    with pytest.raises(SystemExit) as exc:
        tool.main(["--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    for option in ("--input", "--output", "--source", "--sam-checkpoint", "--sam-model",
                   "--points-per-side", "--pred-iou-thresh", "--stability-score-thresh",
                   "--min-mask-region-area", "--dino-weights", "--num-clusters", "--device",
                   "--max-side", "--strict", "--overwrite"):  # fmt: skip
        assert option in text
