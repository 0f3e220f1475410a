"""Dense CLIP features (docs/METHOD.md §2) against naive computations written here."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64, make_tiny_clip

from pixelclip.modeling.dense import DENSE_VARIANTS, build_dense_encoder


def _images(b=2, h=64, w=64, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _naive_table(visual, grid_h, grid_w):
    """Positional table resized with F.interpolate directly, as the reference does."""
    table = visual.positional_embedding
    h0, w0 = visual.grid_size
    if (grid_h, grid_w) == (h0, w0):
        return table
    patches = table[1:].reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], patches[0].flatten(1).t()], dim=0)


def _tokens_before_last_block(visual, images):
    """Token sequence (B, 1 + N, W) entering the last block, with open_clip's own blocks."""
    x = visual.conv1(images)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _naive_table(visual, *grid)
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x, grid


def _ln(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _mlp(x, block):
    hidden = x @ block.mlp.c_fc.weight.t() + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU of the tiny ViT
    return hidden @ block.mlp.c_proj.weight.t() + block.mlp.c_proj.bias


def _float64(module):
    """A float64 copy of ``module`` (for the reference computations)."""
    return copy.deepcopy(module).double()


def _naive_dense(visual, images, variant):
    """Per-token / per-head loops with the last block's weights used explicitly, in the dtype
    of ``images``."""
    x, (gh, gw) = _tokens_before_last_block(visual, images)
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    width = x.shape[-1]
    wq, wk, wv = attn.in_proj_weight.split(width)
    bq, bk, bv = attn.in_proj_bias.split(width)
    wo, bo = attn.out_proj.weight, attn.out_proj.bias
    heads, hd = attn.num_heads, width // attn.num_heads
    batch, tokens = x.shape[:2]
    dtype = x.dtype
    out = torch.zeros(batch, gh * gw, visual.proj.shape[1], dtype=dtype)
    for b in range(batch):
        h = _ln(x[b], block.ln_1)
        q, k, v = h @ wq.t() + bq, h @ wk.t() + bk, h @ wv.t() + bv
        mixed = torch.zeros(tokens, width, dtype=dtype)
        for head in range(heads):
            sl = slice(head * hd, (head + 1) * hd)
            qh, kh, vh = q[:, sl], k[:, sl], v[:, sl]
            if variant in ("reference", "maskclip"):
                weights = torch.eye(tokens, dtype=dtype)
            elif variant == "sclip":
                weights = torch.softmax(qh @ qh.t() / math.sqrt(hd), -1) + torch.softmax(
                    kh @ kh.t() / math.sqrt(hd), -1
                )
            elif variant == "clearclip":
                weights = torch.softmax(qh @ qh.t() / math.sqrt(hd), -1)
            else:  # naclip: Gaussian of the grid distance, std 5 cells, nothing for the class token
                bias = torch.zeros(tokens, tokens, dtype=dtype)
                for i in range(1, tokens):
                    for j in range(1, tokens):
                        (yi, xi), (yj, xj) = divmod(i - 1, gw), divmod(j - 1, gw)
                        bias[i, j] = math.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * 25.0))
                weights = torch.softmax(kh @ kh.t() / math.sqrt(hd) + bias, -1)
            mixed[:, sl] = weights @ vh
        for t in range(1, tokens):
            y = mixed[t] @ wo.t() + bo
            if variant == "reference":
                z = x[b, 0] + y
                z = z + _mlp(_ln(z, block.ln_2), block)
            elif variant == "sclip":
                z = x[b, t] + y
                z = z + _mlp(_ln(z, block.ln_2), block)
            else:
                z = y
            out[b, t - 1] = _ln(z, visual.ln_post) @ visual.proj
    return out.transpose(1, 2).reshape(batch, -1, gh, gw)


@pytest.mark.parametrize("variant", DENSE_VARIANTS)
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_vit_dense_matches_naive(variant, size):
    visual = make_tiny_clip("tiny-vit").visual
    encoder = build_dense_encoder(visual, variant)
    images = _images(h=size[0], w=size[1])
    with torch.no_grad():
        got = encoder(images)
        expected = _naive_dense(visual, images, variant)
        expected64 = _naive_dense(_float64(visual), images.double(), variant)
    assert got.shape == (2, 32, size[0] // 16, size[1] // 16)
    assert_close_to_float64(got, expected64, expected)


def test_variants_differ():
    visual = make_tiny_clip("tiny-vit").visual
    images = _images()
    with torch.no_grad():
        outs = [build_dense_encoder(visual, v)(images) for v in DENSE_VARIANTS]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j], atol=1e-3)


def test_positional_table_native_grid_is_original_and_resized_is_bicubic():
    visual = make_tiny_clip("tiny-vit").visual
    encoder = build_dense_encoder(visual)
    assert torch.equal(encoder.positional_embedding(4, 4), visual.positional_embedding)
    visual64 = _float64(visual)
    for grid in [(6, 6), (3, 5), (20, 20), (1, 1)]:
        with torch.no_grad():
            got = encoder.positional_embedding(*grid)
            expected = _naive_table(visual, *grid)
            expected64 = _naive_table(visual64, *grid)
        assert got.shape == (1 + grid[0] * grid[1], 64)
        assert torch.equal(got[0], visual.positional_embedding[0])
        assert_close_to_float64(got, expected64, expected, msg=str(grid))


def test_positional_cache_follows_optimizer_steps_and_passes_gradients():
    visual = make_tiny_clip("tiny-vit").visual
    encoder = build_dense_encoder(visual)
    images = _images(h=96, w=80)  # 6x5 grid: the resized table is used
    optimizer = torch.optim.SGD([visual.positional_embedding], lr=10.0)
    for _ in range(2):
        features = encoder(images)
        naive_table = _naive_table(visual, 6, 5)
        # Gradient reaching the table through the encoder vs through F.interpolate directly.
        probe = torch.randn(naive_table.shape, generator=torch.Generator().manual_seed(3))
        pos = visual.positional_embedding
        (grad_naive,) = torch.autograd.grad((naive_table * probe).sum(), pos)
        (grad_enc,) = torch.autograd.grad((encoder.positional_embedding(6, 5) * probe).sum(), pos)
        visual64 = _float64(visual)
        table64 = _naive_table(visual64, 6, 5)
        (grad64,) = torch.autograd.grad(
            (table64 * probe.double()).sum(), visual64.positional_embedding
        )
        assert_close_to_float64(grad_enc, grad64, grad_naive, msg="table gradient")
        optimizer.zero_grad()
        features.square().mean().backward()
        assert visual.positional_embedding.grad.abs().sum() > 0
        before = features.detach()
        optimizer.step()
        with torch.no_grad():
            after = encoder(images)
            expected = _naive_dense(visual, images, "reference")
            expected64 = _naive_dense(_float64(visual), images.double(), "reference")
        assert not torch.allclose(after, before, atol=1e-4)  # no stale table served
        assert_close_to_float64(after, expected64, expected, msg="after a step")
    # A load_state_dict (in-place copy) is seen too.
    with torch.no_grad():
        visual.positional_embedding.mul_(0.5)
        expected = _naive_dense(visual, images, "reference")
        expected64 = _naive_dense(_float64(visual), images.double(), "reference")
        assert_close_to_float64(encoder(images), expected64, expected, msg="after a copy")


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-convnext"])
def test_global_path_is_open_clip(name):
    model = make_tiny_clip(name)
    encoder = build_dense_encoder(model.visual)
    images = _images(b=1)
    with torch.no_grad():
        assert torch.equal(encoder.encode_global(images), model.encode_image(images))


def test_convnext_dense_matches_hand_computation():
    visual = make_tiny_clip("tiny-convnext").visual
    encoder = build_dense_encoder(visual, "maskclip")  # ConvNeXt ignores the variant
    assert (encoder.stride, encoder.out_channels) == (32, 32)
    images = _images(b=1, h=64, w=96)

    def by_hand(visual, images):
        x = visual.trunk.stem(images)
        x = visual.trunk.stages(x)
        norm = visual.trunk.head.norm  # LayerNorm2d over channels at every position
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None]
        x = x + norm.bias[:, None, None]
        dense = torch.einsum("bchw,dc->bdhw", x, visual.head.proj.weight)
        # Global path = mean-pool, then the same norm and projection.
        pooled = visual.trunk.stages(visual.trunk.stem(images)).mean((2, 3))
        pooled = F.layer_norm(pooled, (320,), norm.weight, norm.bias, norm.eps)
        return dense, pooled @ visual.head.proj.weight.t()

    with torch.no_grad():
        got = encoder(images)
        expected, expected_global = by_hand(visual, images)
        expected64, expected_global64 = by_hand(_float64(visual), images.double())
        got_global = encoder.encode_global(images)
    assert got.shape == (1, 32, 2, 3)
    assert_close_to_float64(got, expected64, expected, msg="dense")
    # The global path is consistent with the dense one.
    assert_close_to_float64(got_global, expected_global64, expected_global, msg="global")


def test_bad_inputs_are_rejected(tiny_vit, tiny_convnext):
    vit = build_dense_encoder(tiny_vit.visual)
    with pytest.raises(ValueError, match="multiple of the stride 16"):
        vit(torch.zeros(1, 3, 64, 40))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vit(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="multiple of the stride 32"):
        build_dense_encoder(tiny_convnext.visual)(torch.zeros(1, 3, 64, 48))
    with pytest.raises(ValueError, match=r"unknown 'bogus'; choose from"):
        build_dense_encoder(tiny_vit.visual, "bogus")
    with pytest.raises(ValueError, match="no dense encoder for image tower Linear"):
        build_dense_encoder(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name, variant", [("tiny-vit", "reference"), ("tiny-vit", "naclip"),
                                           ("tiny-convnext", "reference")])  # fmt: skip
def test_bf16_autocast_and_grad_checkpointing(name, variant):
    visual = make_tiny_clip(name).visual
    encoder = build_dense_encoder(visual, variant)
    images = _images(b=1, h=64, w=96)
    with torch.no_grad():
        fp32 = encoder(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = encoder(images)
    assert bf16.shape == fp32.shape
    torch.testing.assert_close(bf16.float(), fp32, atol=0.15, rtol=0.05)
    with torch.no_grad():
        fp64 = build_dense_encoder(_float64(visual), variant)(images.double())
    visual.set_grad_checkpointing(True)
    checkpointed = encoder(images)
    checkpointed.sum().backward()
    assert_close_to_float64(checkpointed, fp64, fp32)
