"""CLIPTextEncoder: the truncated text tower equals open_clip's full 77-token computation."""

import copy

import pytest
import torch
from conftest import assert_close_to_float64, make_tiny_clip
from torch import nn

from pixelclip.modeling.text import CLIPTextEncoder

TEXTS = [
    "a cat",
    "A photo of a dog in the scene",
    "itap of a traffic light.",
    "a",
    "a very long description of a rather unusual object, seen from far away, in the rain",
    "",
]


def open_clip_float64(model, ids):
    """open_clip's own full-context ``encode_text`` on a float64 copy of ``model``."""
    with torch.no_grad():
        return copy.deepcopy(model).double().encode_text(ids)


def test_truncated_equals_open_clip_full_context(tiny_clip_name, tokenizer):
    model = make_tiny_clip(tiny_clip_name)
    enc = CLIPTextEncoder.from_clip(model, tokenizer)
    with torch.no_grad():
        expected = model.encode_text(tokenizer(TEXTS))
    got = enc.encode_text(TEXTS)
    assert got.shape == (len(TEXTS), model.text_projection.shape[1])
    assert_close_to_float64(got, open_clip_float64(model, tokenizer(TEXTS)), expected)


def test_encode_embeddings_each_at_its_real_length(tokenizer, tiny_vit):
    enc = CLIPTextEncoder.from_clip(tiny_vit, tokenizer)
    ids = tokenizer(TEXTS)
    expected64 = open_clip_float64(tiny_vit, ids)
    with torch.no_grad():
        expected = tiny_vit.encode_text(ids)
        for i, row in enumerate(ids):
            # The end-of-text id 49407 is the largest id of CLIP's vocabulary.
            eot = int((row == 49407).nonzero()[0])
            emb = tiny_vit.token_embedding(row[None, : eot + 1])
            got = enc.encode_embeddings(emb, torch.tensor([eot]))
            assert_close_to_float64(got[0], expected64[i], expected[i], msg=TEXTS[i])


def test_batch_of_mixed_lengths_equals_one_by_one(tokenizer, tiny_vit):
    enc = CLIPTextEncoder.from_clip(tiny_vit, tokenizer)
    batched = enc.encode_text(TEXTS * 2, batch_size=3)
    single = torch.cat([enc.encode_text([t]) for t in TEXTS * 2])
    # The exact value of every text, whatever its batch: open_clip's tower in float64.
    assert_close_to_float64(batched, open_clip_float64(tiny_vit, tokenizer(TEXTS * 2)), single)
    assert enc.encode_text([]).shape == (0, enc.out_dim)


def test_modules_shared_frozen_and_named_like_open_clip(tokenizer, tiny_vit):
    enc = CLIPTextEncoder.from_clip(tiny_vit, tokenizer)
    keys = set(enc.state_dict())
    expected = {k for k in tiny_vit.state_dict() if not k.startswith(("visual.", "logit_"))}
    assert keys == expected
    assert {"token_embedding.weight", "positional_embedding", "text_projection"} <= keys
    assert enc.token_embedding.weight.data_ptr() == tiny_vit.token_embedding.weight.data_ptr()
    assert enc.transformer is tiny_vit.transformer
    assert not any(p.requires_grad for p in enc.parameters())
    assert (enc.width, enc.out_dim, enc.context_length) == (64, 32, 77)
    enc.train()
    assert not enc.training and not enc.transformer.training


def test_gradient_reaches_embeddings_only(tokenizer, tiny_vit):
    enc = CLIPTextEncoder.from_clip(tiny_vit, tokenizer)
    ids = tokenizer(["a photo of a cat"])[:, :7]
    emb = tiny_vit.token_embedding(ids).detach().requires_grad_(True)
    enc.encode_embeddings(emb, torch.tensor([6])).square().sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def test_linear_projection_and_eos_pooling(tokenizer):
    model = make_tiny_clip("tiny-vit")
    proj = model.text_projection.detach()
    with torch.no_grad():
        expected = model.encode_text(tokenizer(TEXTS))
    expected64 = open_clip_float64(model, tokenizer(TEXTS))
    linear = nn.Linear(proj.shape[0], proj.shape[1], bias=False)
    linear.weight.data.copy_(proj.T)
    del model.text_projection  # a registered Parameter cannot be overwritten by a module
    model.text_projection = linear
    model.text_pool_type = "eos"
    model.text_eos_id = 49407
    enc = CLIPTextEncoder.from_clip(model, tokenizer)
    assert enc.out_dim == proj.shape[1]
    assert "text_projection.weight" in enc.state_dict()
    assert_close_to_float64(enc.encode_text(TEXTS), expected64, expected)


def test_bad_inputs(tokenizer, tiny_vit):
    enc = CLIPTextEncoder.from_clip(tiny_vit, tokenizer)
    with pytest.raises(ValueError, match="exceeds context length"):
        enc.encode_embeddings(torch.zeros(1, 78, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        enc.encode_embeddings(torch.zeros(1, 5, 63), torch.tensor([0]))
    with pytest.raises(ValueError, match="eot_index"):
        enc.encode_embeddings(torch.zeros(2, 5, 64), torch.tensor([0]))
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode_text(["a"], batch_size=0)
    tiny_vit.text_pool_type = "last"
    with pytest.raises(ValueError, match="pool type 'last'"):
        CLIPTextEncoder.from_clip(tiny_vit, tokenizer)
