"""pixelclip.modeling.attention against open_clip's own blocks and nn.MultiheadAttention."""

import pytest
import torch
from conftest import make_tiny_clip

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
    expected = block(x, attn_mask=mask)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    got = residual_block(block, x, attn_mask=mask)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_got, grad_expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the path of the teacher and of inference
        torch.testing.assert_close(residual_block(block, x), block(x), atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_multihead_attention():
    attn = make_tiny_clip("tiny-vit").transformer.resblocks[0].attn
    width = attn.embed_dim
    q, kv = _tokens(length=4, width=width, seed=1), _tokens(length=9, width=width, seed=2)
    mask = torch.zeros(4, 9).masked_fill(torch.rand(4, 9) > 0.7, float("-inf"))
    mask[:, 0] = 0.0  # every query sees at least one key
    expected = attn(q, kv, kv, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(
        multi_head_attention(attn, q, kv, mask), expected, atol=1e-5, rtol=1e-5
    )


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
