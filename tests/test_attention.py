"""pixelclip.modeling.attention against open_clip's own blocks and nn.MultiheadAttention."""

import copy

import pytest
import torch
from conftest import assert_close_to_float64, make_tiny_clip

from pixelclip.modeling.attention import multi_head_attention, residual_block


def _tokens(n=3, length=7, width=64, seed=0):
    return torch.randn(n, length, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_residual_block_matches_open_clip_block(tower):
    model = make_tiny_clip("tiny-vit")
    blocks = (model.visual if tower == "visual" else model).transformer.resblocks
    block = blocks[0]
    width = block.ln_1.normalized_shape[0]
    mask = model.attn_mask[:7, :7] if tower == "text" else None
    x = _tokens(width=width).requires_grad_()

    def run(block, x, mask, fn):
        out = fn(block, x, mask)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), grad

    def open_clip_block(block, x, mask):
        return block(x, attn_mask=mask)

    expected, grad_expected = run(block, x, mask, open_clip_block)
    got, grad_got = run(block, x, mask, residual_block)
    x64 = x.detach().double().requires_grad_()
    mask64 = None if mask is None else mask.double()
    block64 = copy.deepcopy(block).double()
    expected64, grad64 = run(block64, x64, mask64, open_clip_block)
    assert_close_to_float64(got, expected64, expected, msg="values")
    assert_close_to_float64(grad_got, grad64, grad_expected, msg="gradients")
    with torch.no_grad():  # the path of the teacher and of inference (no mask)
        unmasked64 = block64(x64)
        assert_close_to_float64(residual_block(block, x), unmasked64, block(x), msg="no grad")


def test_cross_attention_matches_multihead_attention():
    attn = make_tiny_clip("tiny-vit").transformer.resblocks[0].attn
    width = attn.embed_dim
    q, kv = _tokens(length=4, width=width, seed=1), _tokens(length=9, width=width, seed=2)
    mask = torch.zeros(4, 9).masked_fill(torch.rand(4, 9) > 0.7, float("-inf"))
    mask[:, 0] = 0.0  # every query sees at least one key
    expected = attn(q, kv, kv, need_weights=False, attn_mask=mask)[0]
    q64, kv64, mask64 = q.double(), kv.double(), mask.double()
    expected64 = copy.deepcopy(attn).double()(q64, kv64, kv64, need_weights=False, attn_mask=mask64)
    assert_close_to_float64(multi_head_attention(attn, q, kv, mask), expected64[0], expected)


def test_bf16_autocast_without_grad_is_close_to_fp32():
    """The case nn.MultiheadAttention runs slowly (bf16, no gradients) still computes the block."""
    block = make_tiny_clip("tiny-vit").visual.transformer.resblocks[0]
    x = _tokens(width=block.ln_1.normalized_shape[0], seed=3)
    with torch.no_grad():
        expected = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = residual_block(block, x)
            assert multi_head_attention(block.attn, block.ln_1(x)).dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
