"""The Python inference API: channel order, test-time resize, vocabulary syntax, image inputs,
checkpoint loading and device choice, each against a direct call of the model."""

import json

import numpy as np
import pytest
import torch
from conftest import FLOAT32_EPS
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image
from test_meta_arch import tiny_cfg

from pixelclip.inference.predictor import Predictor, parse_vocabulary

# Slide protocol: the scores depend on the exact resized size (the whole protocol squashes).
SETTINGS = {
    "INPUT.MIN_SIZE_TEST": 96,
    "INPUT.MAX_SIZE_TEST": 128,
    "MODEL.PIXELCLIP.TEST.PROTOCOL": "slide",
}
VOCAB = ["cat", "dog, puppy", "grass"]


def smooth_image(seed: int, height: int = 64, width: int = 80) -> np.ndarray:
    """RGB uint8 (H, W, 3) with distinct channels: coarse random blocks, upsampled."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(8, axis=0).repeat(8, axis=1))


def direct_scores(model, chw_uint8: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return model([{"image": chw_uint8, "height": height, "width": width}])[0]["sem_seg"]


def pil_resized(rgb: np.ndarray, height: int, width: int) -> torch.Tensor:
    """detectron2 resizes uint8 images with PIL bilinear; (3, h, w) uint8."""
    out = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
    return torch.from_numpy(out.copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(tiny_cfg(**SETTINGS), weights="", vocabulary=VOCAB)


@pytest.fixture(scope="module")
def expected(predictor):
    """Scores of the model called directly on the image resized by hand: 64x80 -> 96x120."""
    rgb = smooth_image(0)
    predictor.model.set_vocabulary(VOCAB)
    return rgb, direct_scores(predictor.model, pil_resized(rgb, 96, 120), 64, 80)


def test_output_matches_the_model_on_the_resized_rgb_image(predictor, expected):
    rgb, scores = expected
    out = predictor(rgb, VOCAB)
    assert out["sem_seg"].shape == (3, 64, 80) and out["sem_seg"].dtype == torch.float32
    assert out["labels"].shape == (64, 80) and out["labels"].dtype == torch.int64
    assert out["classes"] == VOCAB
    torch.testing.assert_close(out["sem_seg"], scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(out["labels"], scores.argmax(0))
    # The check can fail: the channel-swapped image or the unresized image score differently.
    swapped = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["sem_seg"]
    assert (swapped - scores).abs().max() > 1e-3
    unresized = direct_scores(predictor.model, torch.from_numpy(rgb).permute(2, 0, 1), 64, 80)
    assert (unresized - scores).abs().max() > 1e-3


def test_bgr_arrays_with_input_format_bgr(predictor, expected):
    rgb, scores = expected
    bgr_predictor = Predictor(tiny_cfg(**SETTINGS), weights="", input_format="BGR")
    bgr_predictor.model.load_state_dict(predictor.model.state_dict())
    out = bgr_predictor(np.ascontiguousarray(rgb[:, :, ::-1]), VOCAB)
    torch.testing.assert_close(out["sem_seg"], scores, atol=1e-5, rtol=1e-5)


def test_model_trained_on_bgr_gets_bgr_from_rgb_input(predictor, expected):
    # A BGR model flips its input back to RGB before CLIP; with the same weights it must give
    # the RGB model's scores only if the predictor really handed it BGR.
    rgb, scores = expected
    bgr_model = Predictor(tiny_cfg(**SETTINGS, **{"INPUT.FORMAT": "BGR"}), weights="")
    bgr_model.model.load_state_dict(predictor.model.state_dict())
    torch.testing.assert_close(bgr_model(rgb, VOCAB)["sem_seg"], scores, atol=1e-5, rtol=1e-5)


def test_vocabulary_changes_between_calls_and_embeddings_are_cached(predictor, monkeypatch):
    rgb = smooth_image(1)
    from pixelclip.modeling import vocabulary

    calls = []
    original = vocabulary.encode_prompt_texts
    monkeypatch.setattr(  # every text-tower pass of a vocabulary goes through this function
        vocabulary, "encode_prompt_texts", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    first = predictor(rgb, "tree, sky | heaven")
    assert calls, "the counter must see the first vocabulary's encoding"
    assert first["classes"] == ["tree", "sky, heaven"] and first["sem_seg"].shape[0] == 2
    second = predictor(rgb, ["sky | heaven", "road", "tree"])
    assert second["classes"] == ["sky, heaven", "road", "tree"]
    assert second["sem_seg"].shape == (3, 64, 80)
    # A class's scores do not depend on the other classes or their order. The image features
    # are the same unit vectors in both calls, and the cosine maps are only averaged and resized
    # with convex weights: a class's scores may differ only as much as its two text embeddings
    # (computed in different text batches: equal up to rounding, see test_text_encoder), plus
    # the rounding of a 32-term cosine.
    head = predictor.model.sem_seg_head
    emb_first = head.class_embeddings(["tree", "sky, heaven"])
    emb_second = head.class_embeddings(["sky, heaven", "road", "tree"])
    for i, j in ((0, 1), (2, 0)):
        bound = float((emb_second[i] - emb_first[j]).norm()) + 4 * 32 * FLOAT32_EPS
        assert float((second["sem_seg"][i] - first["sem_seg"][j]).abs().max()) <= bound
    n = len(calls)
    predictor(rgb, "tree, sky | heaven")
    assert len(calls) == n  # back to a known vocabulary: no text-tower pass
    assert predictor(rgb)["classes"] == ["tree", "sky, heaven"]  # None keeps the current one


def test_parse_vocabulary_syntax(tmp_path):
    assert parse_vocabulary(" cat, dog | puppy ,grass ") == ["cat", "dog, puppy", "grass"]
    assert parse_vocabulary(["cat", "dog, puppy", "a|b"]) == ["cat", "dog, puppy", "a, b"]
    assert parse_vocabulary("cat") == ["cat"]
    path = tmp_path / "names.json"
    path.write_text(json.dumps(["sky", "tree, trees"]))
    assert parse_vocabulary(str(path)) == ["sky", "tree, trees"]
    assert parse_vocabulary(path) == ["sky", "tree, trees"]
    voc = parse_vocabulary("voc_21")  # a class list shipped with pixelclip
    assert len(voc) == 21 and voc[0] == "background" and voc[7] == "car"
    assert parse_vocabulary("voc_20_val_sem_seg") == voc[1:]  # benchmark name, unregistered
    name = "predictor_test_dataset_xyz"
    MetadataCatalog.get(name).set(stuff_classes=["road", "car"])
    try:
        assert parse_vocabulary(name) == ["road", "car"]
    finally:
        MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("", ValueError, "empty"),
        ("   ", ValueError, "empty"),
        ([], ValueError, "empty"),
        ("cat,,dog", ValueError, "empty class"),
        ("cat, dog |", ValueError, "empty synonym"),
        (["cat", ""], ValueError, "non-empty string"),
        ("missing_vocab.json", FileNotFoundError, "missing_vocab.json"),
        (3, ValueError, "int"),
    ],
)
def test_bad_vocabularies_are_clear_errors(spec, error, match):
    with pytest.raises(error, match=match):
        parse_vocabulary(spec)


def test_image_inputs_paths_grayscale_rgba(predictor, tmp_path):
    rgb = smooth_image(2, 48, 64)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    reference = predictor(rgb, VOCAB)["sem_seg"]
    torch.testing.assert_close(predictor(str(path))["sem_seg"], reference)
    torch.testing.assert_close(predictor(path)["sem_seg"], reference)
    torch.testing.assert_close(predictor(Image.fromarray(rgb))["sem_seg"], reference)
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(predictor(rgba)["sem_seg"], reference)  # alpha dropped

    gray = rgb[:, :, 1].copy()
    gray3 = predictor(np.stack([gray] * 3, axis=2))["sem_seg"]
    torch.testing.assert_close(predictor(gray)["sem_seg"], gray3)
    torch.testing.assert_close(predictor(gray[:, :, None])["sem_seg"], gray3)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    torch.testing.assert_close(predictor(tmp_path / "gray.png")["sem_seg"], gray3)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    torch.testing.assert_close(predictor(tmp_path / "rgba.png")["sem_seg"], reference)


def test_bad_images_are_clear_errors(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predictor(tmp_path / "nope.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ValueError, match="corrupt.png"):
        predictor(corrupt)
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 2\)"):
        predictor(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        predictor(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="Tensor"):
        predictor(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_checkpoint_loading_from_config_or_checkpoint_path(tmp_path, expected):
    cfg = tiny_cfg(**SETTINGS)
    torch.manual_seed(1)
    source = build_model(cfg).eval()
    source.set_vocabulary(VOCAB)
    rgb = expected[0]
    want = direct_scores(source, pil_resized(rgb, 96, 120), 64, 80)
    (tmp_path / "config.yaml").write_text(cfg.dump())
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("model_final")
    weights = tmp_path / "model_final.pth"

    torch.manual_seed(2)  # different random init: only loading can restore the scores
    unloaded = Predictor(str(tmp_path / "config.yaml"))  # MODEL.WEIGHTS is "" in the file
    with pytest.raises(ValueError, match="no vocabulary"):
        unloaded(rgb)
    assert (unloaded(rgb, VOCAB)["sem_seg"] - want).abs().max() > 1e-3
    by_checkpoint = Predictor(weights)
    torch.testing.assert_close(by_checkpoint(rgb, VOCAB)["sem_seg"], want, atol=1e-5, rtol=1e-5)
    by_config = Predictor(str(tmp_path / "config.yaml"), weights=str(weights))
    torch.testing.assert_close(by_config(rgb, VOCAB)["sem_seg"], want, atol=1e-5, rtol=1e-5)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Predictor(cfg, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=r"model\.pkl.*pickle files are refused"):
        Predictor(cfg, weights=str(tmp_path / "model.pkl"))
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        Predictor(tmp_path / "sub" / "model_final.pth")
    with pytest.raises(ValueError, match="expected a config file"):
        Predictor(tmp_path / "model.txt")
    with pytest.raises(ValueError, match="MODEL.PIXELCLIP is missing"):
        Predictor(get_cfg())
    with pytest.raises(ValueError, match="input_format"):
        Predictor(cfg, weights="", input_format="RGBA")


def test_device_choice_on_this_machine():
    cfg = tiny_cfg(**{"MODEL.DEVICE": "cuda"})  # detectron2's default
    predictor = Predictor(cfg, weights="")
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Predictor(cfg, weights="", device="cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(cfg, weights="", device="cuda")
