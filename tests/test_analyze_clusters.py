"""The cluster analysis (pixelclip/analysis, tools/analyze_clusters.py): nearest names on cases
known by construction, Hungarian / many-to-one scores against hand-computed examples and a brute
force over all matchings, k != C, checked label maps, and the CLI end to end on a tiny checkpoint.
"""

import itertools
import json
from fractions import Fraction

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64, load_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image
from test_meta_arch import tiny_cfg

from pixelclip.analysis import clusters as C
from pixelclip.analysis.pictures import region_tile
from pixelclip.analysis.run import analyze
from pixelclip.evaluation.sem_seg import LabelMapError
from pixelclip.inference.predictor import Predictor

# Single-token words of CLIP's vocabulary (checked in the test that relies on it).
WORDS = ["sky", "grass", "water", "sand", "road", "tree"]
DATASET = "analysis_test_sem_seg"
CLASSES = ["sky", "grass", "road"]


def pct(fraction: Fraction) -> float:
    return float(fraction * 100)


# ------------------------------------------------------------------------------ nearest names
def test_nearest_names_of_prompts_equal_to_name_embeddings():
    rng = np.random.default_rng(0)
    names = [f"n{i}" for i in range(6)]
    emb = rng.normal(size=(6, 16))
    # cluster 0 is name 2 (scaled: the cosine ignores the norm), cluster 1 is name 5, cluster 2 a
    # mixture of names 1 and 4 with weights 2:1.
    prompts = np.stack([3.0 * emb[2], emb[5], 2 * emb[1] / np.linalg.norm(emb[1])
                        + emb[4] / np.linalg.norm(emb[4])])  # fmt: skip
    out = C.nearest_names(prompts, emb, names, top=3)
    assert [o["cluster"] for o in out] == [0, 1, 2]
    assert out[0]["nearest"][0]["name"] == "n2" and out[1]["nearest"][0]["name"] == "n5"
    assert out[0]["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-12)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for o, p in zip(out, prompts):
        cos = unit @ (p / np.linalg.norm(p))
        want = sorted(range(6), key=lambda c: -cos[c])[:3]
        assert [n["name"] for n in o["nearest"]] == [names[c] for c in want]
        np.testing.assert_allclose([n["cosine"] for n in o["nearest"]], cos[want], rtol=1e-12)
    assert {n["name"] for n in out[2]["nearest"][:2]} == {"n1", "n4"}
    assert len(C.nearest_names(prompts, emb[:2], names[:2], top=3)[0]["nearest"]) == 2
    with pytest.raises(ValueError, match="non-zero"):
        C.nearest_names(np.zeros((1, 16)), emb, names)
    with pytest.raises(ValueError, match="6 names but 5"):
        C.nearest_names(prompts, emb[:5], names)


def test_learned_classes_set_to_name_tokens_find_those_names(tmp_path):
    """With one learnable token per class, setting class j's token to the token embedding of a
    word makes its text embedding that of the word in the same template: cosine 1."""
    cfg = tiny_cfg(**{"MODEL.PROMPT.LENGTH": 1, "MODEL.PROMPT.NUM_CLUSTERS": 3,
                      "MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE": "imagenet_select"})  # fmt: skip
    predictor = Predictor(cfg, weights="")
    head = predictor.model.sem_seg_head
    ids = open_clip.get_tokenizer(cfg.MODEL.CLIP.MODEL_NAME)(WORDS)
    assert (ids.argmax(-1) == 2).all(), "every word must be one token (end-of-text at 2)"
    chosen = [4, 0, 2]  # class j -> WORDS[chosen[j]]
    with torch.no_grad():
        weight = head.text.token_embedding.weight
        head.prompts.prompt_tokens[:, 0] = weight[ids[chosen, 1]]
    result = analyze(predictor, tmp_path / "out", vocabulary=WORDS, progress=False)
    width = head.prompt_embeddings().shape[1]
    for j, c in enumerate(chosen):
        best = result["nearest_names"][j]["nearest"]
        assert best[0]["name"] == WORDS[c]
        cos = torch.tensor([best[0]["cosine"]], dtype=torch.float64)
        assert_close_to_float64(cos, torch.ones(1, dtype=torch.float64), terms=width)
        assert best[1]["cosine"] < best[0]["cosine"] - 1e-3
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["embedding_map.png", "index.md", "results.json"]  # no dataset: no regions
    assert "hungarian" not in result
    # The ensemble embeds names with another template: the cosine is no longer 1.
    other = analyze(predictor, tmp_path / "o2", vocabulary=WORDS, name_prompts="ensemble",
                    progress=False)  # fmt: skip
    cfg.freeze()  # as the quickstart passes it
    Predictor(cfg, weights="")
    assert other["name_templates"] == list(head.prompt_templates) != result["name_templates"]
    assert max(n["nearest"][0]["cosine"] for n in other["nearest_names"]) < 1 - 1e-3


# -------------------------------------------------------------------------- matching & scores
def test_confusion_matrix_by_hand():
    labels = np.array([[0, 0, 1, 1], [0, 255, 1, 1]])
    clusters = np.array([[2, 2, 0, 0], [1, 1, 0, 1]])
    want = [[0, 3], [1, 1], [2, 0]]  # (cluster, class) pixel counts; (1, 1) is ignored
    np.testing.assert_array_equal(C.confusion_matrix(clusters, labels, 3, 2), want)
    with pytest.raises(ValueError, match="labels must be in 0..1 or 255"):
        C.confusion_matrix(clusters, np.full_like(labels, 2), 3, 2)
    with pytest.raises(ValueError, match="cluster indices"):
        C.confusion_matrix(clusters, labels, 2, 2)


def test_hungarian_and_many_to_one_by_hand_with_more_clusters_than_classes():
    confusion = np.array([[0, 3], [1, 2], [2, 0]])  # k = 3 clusters, C = 2 classes
    # Hungarian: c0 -> class 1 (3 px) and c2 -> class 0 (2 px), total 5 (next best: 4); c1
    # unmatched, its 3 pixels wrong. gt: class 0 has 3 px, class 1 has 5 px.
    mapping = C.hungarian_match(confusion)
    np.testing.assert_array_equal(mapping, [1, C.UNMATCHED, 0])
    s = C.scores_under_mapping(confusion, mapping)
    iou = [Fraction(2, 3 + 2 - 2), Fraction(3, 5 + 3 - 3)]
    assert s["iou"] == pytest.approx([pct(v) for v in iou], rel=1e-12)
    assert s["mIoU"] == pytest.approx(pct(sum(iou) / 2), rel=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(pct(Fraction(5, 8)), rel=1e-12)
    # Many-to-one: c0 -> 1, c1 -> 1, c2 -> 0: class 1 predicted on 6 px, 5 right.
    many = C.many_to_one_match(confusion)
    np.testing.assert_array_equal(many, [1, 1, 0])
    s = C.scores_under_mapping(confusion, many)
    iou = [Fraction(2, 3), Fraction(5, 5 + 6 - 5)]
    assert s["mIoU"] == pytest.approx(pct(sum(iou) / 2), rel=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(pct(Fraction(7, 8)), rel=1e-12)


def test_fewer_clusters_than_classes_and_absent_classes():
    confusion = np.array([[5, 1, 0, 0], [0, 1, 4, 0]])  # k = 2, C = 4; class 3 never occurs
    mapping = C.hungarian_match(confusion)
    np.testing.assert_array_equal(mapping, [0, 2])
    s = C.scores_under_mapping(confusion, mapping)
    # class 1 has no cluster: IoU 0; class 3 is absent: left out of the mean.
    iou = [Fraction(5, 5 + 6 - 5), Fraction(0), Fraction(4, 4 + 5 - 4)]
    assert s["iou"][:3] == pytest.approx([pct(v) for v in iou], rel=1e-12)
    assert s["iou"][3] is None
    assert s["mIoU"] == pytest.approx(pct(sum(iou) / 3), rel=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(pct(Fraction(9, 11)), rel=1e-12)
    np.testing.assert_array_equal(C.many_to_one_match(np.array([[0, 0], [1, 2]])), [-1, 1])
    with pytest.raises(ValueError, match="shape"):
        C.scores_under_mapping(confusion, [0])


def _pixel_level_scores(confusion, mapping):
    """mIoU / accuracy from the pixels themselves (one pixel per count), set operations only."""
    k, n = confusion.shape
    clusters = np.repeat(np.repeat(np.arange(k), n), confusion.ravel())
    truth = np.repeat(np.tile(np.arange(n), k), confusion.ravel())
    pred = np.asarray(mapping)[clusters]
    ious = [np.sum((pred == c) & (truth == c)) / np.sum((pred == c) | (truth == c))
            for c in range(n) if np.any(truth == c)]  # fmt: skip
    return 100 * np.mean(ious), 100 * np.mean(pred == truth)


def _all_matchings(k, n):
    """Every one-to-one matching of min(k, n) clusters to classes, as (k,) mappings."""
    if k <= n:
        for perm in itertools.permutations(range(n), k):
            yield np.array(perm)
    else:
        for perm in itertools.permutations(range(k), n):
            mapping = np.full(k, C.UNMATCHED)
            mapping[list(perm)] = np.arange(n)
            yield mapping


@pytest.mark.parametrize(("k", "n"), [(3, 3), (2, 4), (5, 3), (4, 4), (1, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_hungarian_against_brute_force(k, n, seed):
    confusion = np.random.default_rng(seed).integers(0, 50, (k, n))
    mapping = C.hungarian_match(confusion)
    total = lambda m: sum(confusion[j, c] for j, c in enumerate(m) if c != C.UNMATCHED)  # noqa: E731
    totals = [(total(m), m) for m in _all_matchings(k, n)]
    best = max(t for t, _ in totals)
    assert total(mapping) == best
    assert len(set(mapping[mapping != C.UNMATCHED])) == sum(mapping != C.UNMATCHED) <= min(k, n)
    assert all(confusion[j, c] > 0 for j, c in enumerate(mapping) if c != C.UNMATCHED)
    s = C.scores_under_mapping(confusion, mapping)
    miou, acc = _pixel_level_scores(confusion, mapping)
    assert s["mIoU"] == pytest.approx(miou, rel=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(acc, rel=1e-12)
    winners = [m for t, m in totals if t == best]
    if len(winners) == 1 and confusion.all():
        np.testing.assert_array_equal(mapping, winners[0])


def test_zero_overlap_pairs_stay_unmatched():
    confusion = np.array([[4, 0], [0, 0], [1, 0]])  # class 1 has no pixels in any cluster
    np.testing.assert_array_equal(C.hungarian_match(confusion), [0, -1, -1])


# ------------------------------------------------------------------------ PCA, tiles, labels
def test_pca_keeps_the_distances_of_planar_points():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(2, 10))
    x = rng.normal(size=(7, 2)) * [3.0, 1.0] @ plane + rng.normal(size=10)
    coords, explained = C.pca_2d(x)
    dist = lambda p: np.linalg.norm(p[:, None] - p[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(coords), dist(x), atol=1e-9)
    assert explained.sum() == pytest.approx(1.0) and explained[0] >= explained[1]
    again, _ = C.pca_2d(x[::-1].copy())
    np.testing.assert_allclose(again[::-1], coords, atol=1e-9)  # signs fixed: same picture


def test_region_tile_of_a_full_mask_is_the_image():
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    np.testing.assert_array_equal(region_tile(image, np.ones((20, 20), bool), 20, pad=0), image)
    mask = np.zeros((20, 20), bool)
    mask[5:9, 5:9] = True
    tile = region_tile(image, mask, 20, pad=0.0)
    assert tile.shape == (20, 20, 3)
    with pytest.raises(ValueError, match="empty"):
        region_tile(image, np.zeros((20, 20), bool), 8)


def test_label_maps_are_checked(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.array([[0, 1], [255, 2]], np.uint8)).save(good)
    np.testing.assert_array_equal(C.read_label_map(good, (2, 2), 3), [[0, 1], [255, 2]])
    cases = {
        "rgb.png": (Image.new("RGB", (2, 2)), "mode RGB"),
        "big.png": (Image.new("L", (3, 2)), r"2x3 \(h x w\), expected its image's 2x2"),
        "bad.png": (Image.fromarray(np.full((2, 2), 7, np.uint8)), r"values \[7\] in 4 pixels"),
    }
    for name, (im, match) in cases.items():
        im.save(tmp_path / name)
        with pytest.raises(LabelMapError, match=f"{name}.*{match}"):
            C.read_label_map(tmp_path / name, (2, 2), 3)
    with pytest.raises(LabelMapError, match="missing.png: label map is not found"):
        C.read_label_map(tmp_path / "missing.png", (2, 2), 3)


# ------------------------------------------------------------------------- the CLI end to end
def _blocks(seed: int, side: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """An image of three colour bands with noise and its label map (one band ignored in part)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((side, side), np.uint8)
    labels[side // 3 :] = 1
    labels[2 * side // 3 :, side // 2 :] = 2
    colours = np.array([[90, 160, 250], [40, 150, 40], [100, 100, 100]])
    image = colours[labels] + rng.integers(-20, 21, (side, side, 3))
    labels[:4, :4] = 255
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture
def labelled_dataset(tmp_path):
    dicts = []
    for i in range(3):
        image, labels = _blocks(i)
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
        Image.fromarray(labels).save(tmp_path / f"lb{i}.png")
        dicts.append({"file_name": str(tmp_path / f"im{i}.png"), "height": 48, "width": 48,
                      "sem_seg_file_name": str(tmp_path / f"lb{i}.png")})  # fmt: skip
    DatasetCatalog.register(DATASET, lambda: dicts)
    MetadataCatalog.get(DATASET).set(stuff_classes=CLASSES, ignore_label=255)
    yield dicts
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


@pytest.fixture
def checkpoint(tmp_path):
    # SEED 3 (the prompts' initial tokens): a random model whose bands fall into several clusters
    cfg = tiny_cfg(**{"INPUT.MIN_SIZE_TEST": 0, "MODEL.PROMPT.NUM_CLUSTERS": 5, "SEED": 3})
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    (tmp_path / "config.yaml").write_text(cfg.dump())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    return str(tmp_path / "config.yaml"), str(tmp_path / "model_final.pth"), model


def _cluster_map(model, image: np.ndarray) -> np.ndarray:
    """METHOD §9.2 written out: squash to R x R, dense features bilinear to the feature grid,
    cosine with the unit prompt embeddings, bilinear to the image, argmax."""
    with torch.no_grad():
        x = torch.as_tensor(image.copy()).permute(2, 0, 1).float()
        x = (x - model.pixel_mean) / model.pixel_std
        size, side = model.clip_resolution, model.test_feature_resolution
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)
        feats = F.interpolate(model.backbone(x)["clip"], size=(side, side), mode="bilinear",
                              align_corners=False)  # fmt: skip
        prompts = F.normalize(model.sem_seg_head.prompt_embeddings(), dim=-1)
        cos = torch.einsum("bdhw,kd->bkhw", F.normalize(feats, dim=1), prompts)
        cos = F.interpolate(cos, size=image.shape[:2], mode="bilinear", align_corners=False)
    return cos[0].argmax(0).numpy()


def test_cli_end_to_end(tmp_path, labelled_dataset, checkpoint, capsys):
    config, weights, model = checkpoint
    tool = load_script("tools/analyze_clusters.py", "analyze_clusters_tool")
    out = tmp_path / "analysis"
    argv = ["--config-file", config, "--weights", weights, "--dataset", DATASET,
            "--output", str(out), "--no-progress", "--tiles", "2"]  # fmt: skip
    assert tool.main(argv) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cluster_regions.png", "embedding_map.png", "index.md", "results.json"]
    for png in ("cluster_regions.png", "embedding_map.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and min(im.size) > 50
    result = json.loads((out / "results.json").read_text())
    assert result["num_clusters"] == 5 and result["classes"] == CLASSES
    assert result["vocabulary"] == CLASSES and result["images"] == 3
    # The overlap matrix equals one computed from an independent cluster map and the labels.
    want = np.zeros((5, 3), np.int64)
    for d in labelled_dataset:
        image = np.asarray(Image.open(d["file_name"]))
        labels = np.asarray(Image.open(d["sem_seg_file_name"]))
        cmap = _cluster_map(model, image)
        for j, c in itertools.product(range(5), range(3)):
            want[j, c] += np.sum((cmap == j) & (labels == c))
    np.testing.assert_array_equal(result["confusion"], want)
    assert np.count_nonzero(want.sum(1)) >= 2, "a single cluster would make the check void"
    assert result["labelled_pixels"] == 3 * (48 * 48 - 16)
    mapping = C.hungarian_match(want)
    miou, acc = _pixel_level_scores(want, mapping)
    assert result["hungarian"]["mIoU"] == pytest.approx(miou, rel=1e-9)
    assert result["hungarian"]["pixel_accuracy"] == pytest.approx(acc, rel=1e-9)
    names = [CLASSES[c] if c >= 0 else None for c in mapping]
    assert result["hungarian"]["cluster_to_class"] == names
    index = (out / "index.md").read_text()
    assert f"| Hungarian (one-to-one) | {result['hungarian']['mIoU']:.1f} |" in index
    assert "![cluster regions](cluster_regions.png)" in index
    assert len(result["nearest_names"]) == 5
    assert all(len(n["nearest"]) == 3 for n in result["nearest_names"])

    # --max-images and a free-text vocabulary for the nearest names
    argv2 = argv[:-3] + ["--max-images", "1", "--vocabulary", "sky, grass | lawn, cat, dog"]
    argv2[argv2.index(str(out))] = str(tmp_path / "a2")
    assert tool.main(argv2) == 0
    r2 = json.loads((tmp_path / "a2" / "results.json").read_text())
    assert r2["images"] == 1 and r2["vocabulary"] == ["sky", "grass, lawn", "cat", "dog"]
    assert r2["classes"] == CLASSES and np.sum(r2["confusion"]) == 48 * 48 - 16


def test_cli_errors_name_the_problem(tmp_path, labelled_dataset, checkpoint, capsys):
    config, weights, _ = checkpoint
    tool = load_script("tools/analyze_clusters.py", "analyze_clusters_tool")
    base = ["--config-file", config, "--output", str(tmp_path / "o"), "--no-progress"]
    cases = [
        (["--weights", weights, "--dataset", "no_such_dataset"], "'no_such_dataset' is not reg"),
        (["--dataset", DATASET], "no checkpoint"),
        (["--weights", weights], "give a vocabulary of names, a labelled dataset"),
        (["--weights", str(tmp_path / "missing.pth"), "--dataset", DATASET], "missing.pth"),
    ]
    for extra, match in cases:
        assert tool.main(base + extra) == 2
        assert match in capsys.readouterr().err
    Image.new("RGB", (48, 48)).save(labelled_dataset[1]["sem_seg_file_name"])
    assert tool.main(base + ["--weights", weights, "--dataset", DATASET]) == 2
    assert "lb1.png: label map has PIL mode RGB" in capsys.readouterr().err


def test_dense_scores_are_the_inference_scores(checkpoint):
    _, _, model = checkpoint
    image = torch.as_tensor(_blocks(0)[0]).permute(2, 0, 1).contiguous()
    inputs = [{"image": image, "height": 40, "width": 56}]
    model.set_vocabulary(CLASSES)
    want = model(inputs)[0]["sem_seg"]
    got = model.dense_scores(inputs, model.sem_seg_head.class_embeddings(CLASSES))[0]
    assert got.shape == (3, 40, 56)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_region_grid_keeps_the_swatch_colours(tmp_path):
    from pixelclip.analysis.pictures import write_region_grid

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    rows = [(f"c{i}", "text", (10 * i, 200 - 5 * i, 50), tiles) for i in range(20)]
    write_region_grid(tmp_path / "g.png", rows, 3, 32, rows_per_column=10)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "P"  # the 256-colour palette
        rgb = np.asarray(im.convert("RGB"))
    row_h = 32 + 4  # tile side + pad
    for i in range(20):
        x, y = 4 + (i // 10) * (150 + 3 * 36 + 12), 4 + (i % 10) * row_h
        assert tuple(rgb[y + 7, x + 5]) == rows[i][2]
    first = rgb[4 : 4 + 32, 4 + 150 : 4 + 150 + 32].astype(int)
    # uniform noise, the worst case for a palette: ~14 off on average (another tile: ~85)
    assert np.abs(first - tiles[0]).mean() < 30
