"""open_clip's transformer blocks, run on batch-first tensors without nn.MultiheadAttention's
internal transposes.

``nn.MultiheadAttention(batch_first=True)`` outside its inference fast path (which autocast and
autograd disable) transposes its inputs to (L, N, W) and applies the in-projection to that
non-contiguous view. Under bf16 without gradients (the momentum teacher, batched inference, the
vocabulary encoding) PyTorch 2.14 on CPU computes such a 3-D ``F.linear`` as a batched matmul
with the weight expanded once per position: for ViT-B/16 on 2 images at 320 px, 1.0 s per block
instead of 0.02 s (docs/PERFORMANCE.md). The functions here compute the same attention on the
contiguous batch-first tensors: in-projection, ``F.scaled_dot_product_attention``,
out-projection, as ``F.multi_head_attention_forward`` does with ``need_weights=False``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["multi_head_attention", "residual_block", "supports_block"]


def supports_block(block: nn.Module) -> bool:
    """Whether :func:`residual_block` can run ``block``: open_clip's pre-norm block layout (ln_1,
    ls_1, ln_2, mlp, ls_2; no separate key/value norm) with an ``nn.MultiheadAttention`` that has
    a fused in-projection and no bias_k / bias_v."""
    attn = getattr(block, "attn", None)
    return (
        all(hasattr(block, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2"))
        and not hasattr(block, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_k is None
    )


def multi_head_attention(
    attn: nn.MultiheadAttention, q_x: Tensor, kv_x: Tensor | None = None, attn_mask=None
) -> Tensor:
    """``attn(q_x, kv_x, kv_x, need_weights=False, attn_mask=attn_mask)[0]`` for batch-first
    (N, L, W) inputs and a fused in-projection (no bias_k / bias_v, no key padding mask).

    Args:
        attn: the module whose weights are used.
        q_x: (N, L, W) queries.
        kv_x: (N, S, W) keys and values; None = ``q_x`` (self-attention).
        attn_mask: None or an additive float mask broadcastable to (N, heads, L, S).
    """
    width = q_x.shape[-1]
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if kv_x is None:
        q, k, v = F.linear(q_x, weight, bias).chunk(3, dim=-1)
    else:
        q = F.linear(q_x, weight[:width], None if bias is None else bias[:width])
        kv_bias = None if bias is None else bias[width:]
        k, v = F.linear(kv_x, weight[width:], kv_bias).chunk(2, dim=-1)
    heads = attn.num_heads
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    dropout = attn.dropout if attn.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    return F.linear(y.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)


def residual_block(block: nn.Module, x: Tensor, attn_mask=None) -> Tensor:
    """open_clip ``ResidualAttentionBlock.forward`` (pre-norm self-attention and MLP with layer
    scales) on a batch-first (N, L, W) tensor, attention by :func:`multi_head_attention`."""
    x = x + block.ls_1(multi_head_attention(block.attn, block.ln_1(x), attn_mask=attn_mask))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
