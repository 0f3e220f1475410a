"""LearnablePrompts: placeholders, real length, truncation equality, gradients, seeding."""

import copy

import pytest
import torch
from conftest import assert_close_to_float64

from pixelclip.modeling import text as text_module
from pixelclip.modeling.text import CLIPTextEncoder, LearnablePrompts

K, L = 3, 4


@pytest.fixture
def encoder(tiny_vit, tokenizer):
    return CLIPTextEncoder.from_clip(tiny_vit, tokenizer)


def naive_sequences(model, tokenizer, template, prompts, word="x"):
    """Full 77-token sequences built by hand: placeholder id from the tokenizer's BPE of `word`."""
    (word_id,) = tokenizer.encode(word)
    ids = tokenizer([template.replace("{}", " ".join([word] * L))])[0]
    base = model.token_embedding(ids)
    seqs = []
    for c in range(prompts.shape[0]):
        rows, j = [], 0
        for pos in range(ids.shape[0]):
            if ids[pos] == word_id:
                rows.append(prompts[c, j])
                j += 1
            else:
                rows.append(base[pos])
        assert j == L
        seqs.append(torch.stack(rows))
    return ids, torch.stack(seqs)


def full_context_tower(model, ids, seqs):
    """open_clip's encode_text pipeline on 77-token embedding sequences (written out here)."""
    x = seqs + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = x[:, int(ids.argmax())]
    return x @ model.text_projection


def float64_twins(encoder, prompts):
    """Float64 copies of a text encoder and of its prompts (the fp32 originals are untouched)."""
    return copy.deepcopy(encoder).double(), copy.deepcopy(prompts).double()


def test_default_template_real_length_and_positions(encoder, tokenizer):
    prompts = LearnablePrompts(text_encoder=encoder, tokenizer=tokenizer, num_clusters=K, length=L)
    # <sot> a photo of a X X X X in the scene <eot>
    assert prompts.real_length == 13
    assert prompts.placeholder_positions.tolist() == [5, 6, 7, 8]
    assert int(prompts.eot_index) == 12
    assert prompts.prompt_tokens.shape == (K, L, 64)


@pytest.mark.parametrize("template", ["A photo of a {} in the scene", "x marks a {}, x."])
def test_substitution_and_full_context_equality(tiny_vit, encoder, tokenizer, template):
    prompts = LearnablePrompts(
        text_encoder=encoder, tokenizer=tokenizer, num_clusters=K, length=L, template=template
    )
    with torch.no_grad():
        if "x" in template:
            # The template holds the word "x" itself: another placeholder must have been chosen.
            ids, naive = naive_sequences(tiny_vit, tokenizer, template, prompts.prompt_tokens, "z")
        else:
            ids, naive = naive_sequences(tiny_vit, tokenizer, template, prompts.prompt_tokens)
        got_seq = prompts.embedding_sequences(encoder)
        real = got_seq.shape[1]
        assert real == int(ids.argmax()) + 1
        torch.testing.assert_close(got_seq, naive[:, :real], rtol=0, atol=0)
        expected = full_context_tower(tiny_vit, ids, naive)
        expected64 = full_context_tower(copy.deepcopy(tiny_vit).double(), ids, naive.double())
        got = prompts(encoder)
    assert got.shape == (K, 32)
    assert_close_to_float64(got, expected64, expected)


def test_convnext_model_full_context_equality(tokenizer):
    from conftest import make_tiny_clip

    model = make_tiny_clip("tiny-convnext")
    enc = CLIPTextEncoder.from_clip(model, tokenizer)
    prompts = LearnablePrompts(text_encoder=enc, tokenizer=tokenizer, num_clusters=K, length=L)
    with torch.no_grad():
        ids, naive = naive_sequences(model, tokenizer, prompts.template, prompts.prompt_tokens)
        expected = full_context_tower(model, ids, naive)
        expected64 = full_context_tower(copy.deepcopy(model).double(), ids, naive.double())
        assert_close_to_float64(prompts(enc), expected64, expected)


def test_gradient_reaches_prompts_only(encoder, tokenizer):
    prompts = LearnablePrompts(text_encoder=encoder, tokenizer=tokenizer, num_clusters=K, length=L)
    prompts(encoder).square().sum().backward()
    assert prompts.prompt_tokens.grad is not None
    assert (prompts.prompt_tokens.grad.abs().sum(dim=-1) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())


def test_state_dict_holds_only_prompt_tokens(encoder, tokenizer):
    prompts = LearnablePrompts(text_encoder=encoder, tokenizer=tokenizer, num_clusters=K, length=L)
    assert list(prompts.state_dict()) == ["prompt_tokens"]
    assert [n for n, _ in prompts.named_parameters()] == ["prompt_tokens"]


def test_seeded_init_from_vocabulary_without_global_rng(encoder, tokenizer):
    def build(seed):
        return LearnablePrompts(
            text_encoder=encoder, tokenizer=tokenizer, num_clusters=K, length=L, seed=seed
        ).prompt_tokens.detach()

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build(0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    b = build(0)
    c = build(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Every row is the token embedding of some vocabulary id.
    table = encoder.token_embedding.weight
    for row in a.reshape(-1, a.shape[-1]):
        assert (table == row).all(dim=1).any()


def test_invalid_arguments(encoder, tokenizer):
    def build(**kw):
        return LearnablePrompts(text_encoder=encoder, tokenizer=tokenizer, **kw)

    with pytest.raises(ValueError, match="num_clusters"):
        build(num_clusters=1)
    with pytest.raises(ValueError, match="length"):
        build(length=0)
    with pytest.raises(ValueError, match="template"):
        build(template="a photo of a thing")
    with pytest.raises(ValueError, match="template"):
        build(template="a {} and a {}")
    with pytest.raises(ValueError, match="placeholder"):
        build(template="word " * 80 + "{}")


def test_no_usable_placeholder_word(encoder, tokenizer, monkeypatch):
    monkeypatch.setattr(text_module, "_PLACEHOLDER_WORDS", ("x", "z"))
    with pytest.raises(ValueError, match="placeholder"):
        LearnablePrompts(text_encoder=encoder, tokenizer=tokenizer, template="z and x {}")


def test_shared_prefix_matches_the_plain_tower_in_values_and_gradients(encoder, tokenizer):
    prompts = LearnablePrompts(text_encoder=encoder, tokenizer=tokenizer, num_clusters=K, length=L)
    assert prompts.shared_prefix == 5 and encoder._standard_blocks()  # "<sot> a photo of a"
    seq = prompts.embedding_sequences(encoder)
    eot = prompts.eot_index.expand(K)
    weights = torch.randn(K, 32, generator=torch.Generator().manual_seed(0))

    def run(encoder, prompts, prefix):
        prompts.prompt_tokens.grad = None
        out = encoder.encode_embeddings(prompts.embedding_sequences(encoder), eot, prefix)
        (out * weights.to(out.dtype)).sum().backward()
        return out.detach(), prompts.prompt_tokens.grad.clone()

    plain, plain_grad = run(encoder, prompts, 0)
    shared, shared_grad = run(encoder, prompts, prompts.shared_prefix)
    # The plain tower in float64 is the reference both fp32 paths are measured against.
    plain64, plain_grad64 = run(*float64_twins(encoder, prompts), 0)
    assert seq.shape[1] == 13
    assert_close_to_float64(shared, plain64, plain, msg="values")
    assert_close_to_float64(shared_grad, plain_grad64, plain_grad, msg="gradients")
    assert_close_to_float64(prompts(encoder), plain64, plain, msg="forward")
