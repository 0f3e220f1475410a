"""Vocabulary loading, prompt-ensembled class embeddings and their cache (METHOD §9)."""

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch.utils.flop_counter import FlopCounterMode

from pixelclip.modeling import vocabulary
from pixelclip.modeling.text import CLIPTextEncoder
from pixelclip.modeling.vocabulary import (
    PROMPT_ENSEMBLES,
    VocabularyEmbedder,
    common_prefix_length,
    encode_prompt_texts,
    encode_vocabulary,
    load_vocabulary,
    prompt_templates,
)

NAMES = ["cat", "person, people,  human", "traffic light", "sky"]
TEMPLATES = PROMPT_ENSEMBLES["imagenet_select"][:3]


@pytest.fixture
def encoder(tiny_vit, tokenizer):
    return CLIPTextEncoder.from_clip(tiny_vit, tokenizer)


def count_encode_calls(monkeypatch):
    """Record the number of texts of every encode_prompt_texts call (the text-tower work)."""
    calls = []
    original = vocabulary.encode_prompt_texts

    def counted(encoder, texts, group_of, batch_size=256):
        calls.append(len(texts))
        return original(encoder, texts, group_of, batch_size=batch_size)

    monkeypatch.setattr(vocabulary, "encode_prompt_texts", counted)
    return calls


def tower_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def test_prompt_ensembles():
    assert PROMPT_ENSEMBLES["single"] == ("A photo of a {} in the scene",)
    assert PROMPT_ENSEMBLES["imagenet_select"] == (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
        "A photo of a {} in the scene",
    )
    # An independent copy of the CLIP paper's 80 templates ships with open_clip.
    assert PROMPT_ENSEMBLES["imagenet"] == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert prompt_templates("single") == PROMPT_ENSEMBLES["single"]
    with pytest.raises(ValueError, match="unknown prompt ensemble 'nope'"):
        prompt_templates("nope")
    assert prompt_templates("a photo of a {}.") == ("a photo of a {}.",)  # one literal template
    with pytest.raises(ValueError, match="unknown prompt ensemble"):
        prompt_templates("a {} and a {}")


def test_load_vocabulary_sources(tmp_path):
    assert load_vocabulary((" cat ", "dog,  puppy")) == ["cat", "dog,  puppy"]
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps(["road", " car "]))
    assert load_vocabulary(str(listed)) == ["road", "car"]
    as_dict = tmp_path / "meta.json"
    as_dict.write_text(json.dumps({"stuff_classes": ["wall"], "other": 1}))
    assert load_vocabulary(as_dict) == ["wall"]

    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "pixelclip_test_vocabulary_ds"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=["tree", "grass"])
    assert load_vocabulary(name) == ["tree", "grass"]


def test_load_vocabulary_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_vocabulary([])
    with pytest.raises(ValueError, match="class 1 is 3"):
        load_vocabulary(["cat", 3])
    with pytest.raises(ValueError, match="class 0 is '  '"):
        load_vocabulary(["  "])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_vocabulary(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('["cat",')
    with pytest.raises(ValueError, match="bad.json.*malformed JSON"):
        load_vocabulary(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"classes": ["a"]}))
    with pytest.raises(ValueError, match="wrong.json.*stuff_classes"):
        load_vocabulary(wrong)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(ValueError, match="scalar.json.*expected a list"):
        load_vocabulary(scalar)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="empty.json.*empty"):
        load_vocabulary(empty)
    with pytest.raises(ValueError, match="'no_such_dataset_xyz'.*registered detectron2 dataset"):
        load_vocabulary("no_such_dataset_xyz")
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("pixelclip_test_no_stuff").set(thing_classes=["a"])
    with pytest.raises(ValueError, match="pixelclip_test_no_stuff.*stuff_classes"):
        load_vocabulary("pixelclip_test_no_stuff")
    with pytest.raises(ValueError, match="expected a list"):
        load_vocabulary(42)


def naive_class_embeddings(model, tokenizer, names, templates):
    """Per-class loop over open_clip's own 77-token encode_text."""
    out = []
    with torch.no_grad():
        for name in names:
            synonyms = [s.strip() for s in name.split(",") if s.strip()]
            per_template = []
            for template in templates:
                texts = [template.format(s) for s in synonyms]
                emb = model.encode_text(tokenizer(texts), normalize=True)
                per_template.append(F.normalize(emb.mean(0), dim=-1))
            out.append(F.normalize(torch.stack(per_template).mean(0), dim=-1))
    return torch.stack(out)


def test_encode_vocabulary_matches_naive_loop(tiny_vit, tokenizer, encoder, monkeypatch):
    calls = count_encode_calls(monkeypatch)
    got = encode_vocabulary(encoder, NAMES, TEMPLATES)
    assert calls == [(1 + 3 + 1 + 1) * len(TEMPLATES)]  # every distinct text, one call
    expected = naive_class_embeddings(tiny_vit, tokenizer, NAMES, TEMPLATES)
    model64 = copy.deepcopy(tiny_vit).double()
    expected64 = naive_class_embeddings(model64, tokenizer, NAMES, TEMPLATES)
    assert got.shape == (len(NAMES), 32) and got.dtype == torch.float32
    assert_close_to_float64(got, expected64, expected)
    # Unit norm up to the rounding of two sums of 32 squares (normalising, then measuring).
    ones = torch.ones(len(NAMES), dtype=torch.float64)
    assert_close_to_float64(got.norm(dim=-1), ones, terms=2 * 32, msg="norm")


def test_encode_vocabulary_bad_input(encoder):
    with pytest.raises(ValueError, match="empty"):
        encode_vocabulary(encoder, [], TEMPLATES)
    with pytest.raises(ValueError, match="no synonym"):
        encode_vocabulary(encoder, [" , "], TEMPLATES)
    with pytest.raises(ValueError, match="exactly one"):
        encode_vocabulary(encoder, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="non-empty sequence"):
        encode_vocabulary(encoder, ["cat"], [])


def test_embedder_memory_and_disk_cache(encoder, tmp_path, monkeypatch, caplog):
    calls = count_encode_calls(monkeypatch)
    embedder = VocabularyEmbedder(cache_dir=tmp_path / "cache")
    first = embedder(encoder, NAMES, TEMPLATES)
    second = embedder(encoder, NAMES, TEMPLATES)
    assert len(calls) == 1  # the first call only
    assert torch.equal(first, second)
    expected = encode_vocabulary(encoder, NAMES, TEMPLATES)
    torch.testing.assert_close(first, expected)
    files = list((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".pt"]  # no temporary file left behind

    calls.clear()
    fresh = VocabularyEmbedder(cache_dir=tmp_path / "cache")
    assert torch.equal(fresh(encoder, NAMES, TEMPLATES), first)
    assert calls == []  # read from disk

    files[0].write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        again = VocabularyEmbedder(cache_dir=tmp_path / "cache")(encoder, NAMES, TEMPLATES)
    assert "ignoring unreadable" in caplog.text
    assert len(calls) == 1
    torch.testing.assert_close(again, first)
    data = torch.load(files[0], weights_only=True)  # rewritten, readable again
    assert torch.equal(data["embeddings"], again)


def test_embedder_key_follows_weights_names_and_templates(encoder):
    embedder = VocabularyEmbedder()
    key = embedder.cache_key(encoder, NAMES, TEMPLATES)
    assert embedder.cache_key(encoder, NAMES, TEMPLATES) == key
    assert embedder.cache_key(encoder, NAMES[:2], TEMPLATES) != key
    assert embedder.cache_key(encoder, NAMES, TEMPLATES[:1]) != key
    before = embedder(encoder, NAMES, TEMPLATES)
    with torch.no_grad():
        noise = torch.randn(
            encoder.text_projection.shape, generator=torch.Generator().manual_seed(0)
        )
        encoder.text_projection.add_(noise)
    assert embedder.cache_key(encoder, NAMES, TEMPLATES) != key
    after = embedder(encoder, NAMES, TEMPLATES)
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="max_memory_entries"):
        VocabularyEmbedder(max_memory_entries=0)


def test_common_prefix_length():
    ids = torch.tensor([[49406, 7, 8, 9, 49407], [49406, 7, 8, 5, 49407], [49406, 7, 8, 9, 3]])
    assert common_prefix_length(ids, torch.tensor([4, 4, 4])) == 3
    assert common_prefix_length(ids, torch.tensor([4, 2, 4])) == 2  # never past an end-of-text
    assert common_prefix_length(ids[:1], torch.tensor([4])) == 4
    assert common_prefix_length(torch.tensor([[1, 2], [3, 2]]), torch.tensor([1, 1])) == 0


@pytest.mark.parametrize("packed", [True, False])
def test_prompt_texts_with_shared_prefixes_equal_the_plain_encoding(
    tiny_vit, tokenizer, encoder, monkeypatch, packed
):
    """Grouped, prefix-sharing encoding against open_clip's 77-token encode_text in float64 and
    in fp32, with groups of one text, groups without a common prefix and small batches; the
    packed path (all groups' tails batched, last block at end-of-text only) and the group-by-
    group path of towers it does not support."""
    if not packed:
        monkeypatch.setattr(vocabulary, "_packable", lambda encoder: False)
    texts = [t.format(n) for t in TEMPLATES for n in ("cat", "traffic light", "a b c d e")]
    texts += ["dog", "sky at night", "a photo of a dog"]
    groups = [i // 3 for i in range(9)] + [9, 10, 10]
    got = encode_prompt_texts(encoder, texts, groups, batch_size=2)
    tokens = tokenizer(texts)
    with torch.no_grad():
        expected = tiny_vit.encode_text(tokens)
        expected64 = copy.deepcopy(tiny_vit).double().encode_text(tokens)
    assert_close_to_float64(got, expected64, expected)
    with pytest.raises(ValueError, match="group_of has 1 labels for 2 texts"):
        encode_prompt_texts(encoder, ["a", "b"], [0])
    assert encode_prompt_texts(encoder, [], []).shape == (0, 32)


def test_prompt_texts_cost_fewer_flops_than_plain(encoder):
    """The template's head runs once per template and the last block at end-of-text only:
    fewer FLOPs than one length-sorted encode_text call on the same texts (counted)."""
    names = ["cat", "traffic light", "sky", "tree", "person", "potted plant"]
    templates = PROMPT_ENSEMBLES["imagenet_select"]
    texts = [t.format(n) for t in templates for n in names]
    groups = [i // len(names) for i in range(len(texts))]
    ours = tower_flops(lambda: encode_prompt_texts(encoder, texts, groups))
    plain = tower_flops(lambda: encoder.encode_text(texts))
    assert ours < 0.75 * plain
