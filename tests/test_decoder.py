"""ConvHead (METHOD §5): structure, reference checkpoint layout, shared weights across clusters."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_float64

from pixelclip.modeling.decoder import ConvHead

# docs/REFERENCE_CHECKPOINT.md, ``head.*``.
REFERENCE_HEAD = {
    "conv0.weight": (64, 1, 3, 3),
    "conv0.bias": (64,),
    "up1.weight": (64, 64, 2, 2),
    "up1.bias": (64,),
    "conv1.double_conv.0.weight": (64, 64, 3, 3),
    "conv1.double_conv.1.weight": (64,),
    "conv1.double_conv.1.bias": (64,),
    "conv1.double_conv.3.weight": (64, 64, 3, 3),
    "conv1.double_conv.4.weight": (64,),
    "conv1.double_conv.4.bias": (64,),
    "up2.weight": (64, 32, 2, 2),
    "up2.bias": (32,),
    "conv2.double_conv.0.weight": (32, 32, 3, 3),
    "conv2.double_conv.1.weight": (32,),
    "conv2.double_conv.1.bias": (32,),
    "conv2.double_conv.3.weight": (32, 32, 3, 3),
    "conv2.double_conv.4.weight": (32,),
    "conv2.double_conv.4.bias": (32,),
    "proj.weight": (1, 32, 3, 3),
    "proj.bias": (1,),
}


def _head(seed: int = 0) -> ConvHead:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = ConvHead()
    # Non-trivial GroupNorm affine parameters, so the functional check below sees them.
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "double_conv.1" in name or "double_conv.4" in name:
                p.copy_(torch.linspace(0.5, 1.5, p.numel()) if name.endswith("weight") else 0.1)
    return head


def test_state_dict_matches_reference_layout():
    state = ConvHead().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == REFERENCE_HEAD
    reference = {k: torch.randn(shape) for k, shape in REFERENCE_HEAD.items()}
    ConvHead().load_state_dict(reference, strict=True)


def _functional_reference(head: ConvHead, x: torch.Tensor) -> torch.Tensor:
    """METHOD §5 written as plain functional ops on the state dict."""
    s = head.state_dict()

    def double(x, prefix, groups):
        for conv, norm in ((0, 1), (3, 4)):
            x = F.conv2d(x, s[f"{prefix}.{conv}.weight"], padding=1)
            x = F.group_norm(x, groups, s[f"{prefix}.{norm}.weight"], s[f"{prefix}.{norm}.bias"])
            x = F.relu(x)
        return x

    x = F.conv2d(x, s["conv0.weight"], s["conv0.bias"], padding=1)
    x = F.conv_transpose2d(x, s["up1.weight"], s["up1.bias"], stride=2)
    x = double(x, "conv1.double_conv", 4)
    x = F.conv_transpose2d(x, s["up2.weight"], s["up2.bias"], stride=2)
    x = double(x, "conv2.double_conv", 2)
    return F.conv2d(x, s["proj.weight"], s["proj.bias"], padding=1)


def test_forward_matches_method_and_shapes():
    head = _head().eval()
    cost = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def resize(x):
        return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)

    with torch.no_grad():
        out = head(cost)
        expected = _functional_reference(head, cost.reshape(6, 1, 5, 5)).reshape(2, 3, 20, 20)
        head64, maps64 = copy.deepcopy(head).double(), cost.reshape(6, 1, 5, 5).double()
        expected64 = _functional_reference(head64, maps64).reshape(2, 3, 20, 20)
        resized = head(cost, output_size=16)
    assert out.shape == (2, 3, 20, 20)
    assert_close_to_float64(out, expected64, expected)
    assert resized.shape == (2, 3, 16, 16)
    assert_close_to_float64(resized, resize(expected64), resize(out), msg="resized")


def test_weights_shared_across_clusters():
    head = _head(2)
    cost = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = head(cost)
        permuted = head(cost[:, perm])
        single = head(cost[1:2, 3:4])
        out64 = copy.deepcopy(head).double()(cost.double())
    assert_close_to_float64(permuted, out64[:, perm], out[:, perm], msg="permuted")
    assert_close_to_float64(single, out64[1:2, 3:4], out[1:2, 3:4], msg="single map")


def test_other_widths_and_bad_channels():
    head = ConvHead(channels=(32, 16, 16))
    assert head(torch.zeros(1, 2, 3, 3)).shape == (1, 2, 24, 24)
    assert head.conv3.double_conv[1].num_groups == 1
    with pytest.raises(ValueError, match="DECODER_CHANNELS"):
        ConvHead(channels=(64, 40))
    with pytest.raises(ValueError, match="DECODER_CHANNELS"):
        ConvHead(channels=())
    with pytest.raises(ValueError, match=r"\(B, k, h, w\)"):
        ConvHead()(torch.zeros(3, 5, 5))


def test_chunked_checkpointing_gives_the_same_logits_and_gradients():
    torch.manual_seed(0)
    # float64, so that summing the weight gradients group by group cannot hide a real difference
    whole = ConvHead(channels=(32, 16)).double()
    chunked = ConvHead(channels=(32, 16), chunk_size=3).double()  # 10 maps -> groups 3, 3, 3, 1
    chunked.load_state_dict(whole.state_dict())
    cost = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    results = []
    for head in (whole, chunked):
        x = cost.clone().requires_grad_(True)
        out = head(x, output_size=(10, 10))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, [p.grad for p in head.parameters()]))
    (out_a, grad_a, pgrads_a), (out_b, grad_b, pgrads_b) = results
    assert out_a.shape == (2, 5, 10, 10)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(grad_b, grad_a)
    for a, b in zip(pgrads_a, pgrads_b):
        torch.testing.assert_close(b, a)
    with pytest.raises(ValueError, match="DECODER_CHUNK_SIZE"):
        ConvHead(chunk_size=-1)
