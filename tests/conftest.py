"""Shared fixtures: tiny open_clip models with random weights, built offline in well under a second.

The model configs live in ``configs/clip_models/`` (the quick-schedule configs use them too). They
mirror the real architectures (a QuickGELU ViT with 16-pixel patches; a ConvNeXt tower with a
timm trunk and a linear head) at a tiny width, with CLIP's real tokenizer vocabulary.

Threads: torch runs on ``PIXELCLIP_TEST_THREADS`` threads if that variable is set (the suite must
pass with 1 and with 2), otherwise on min(2, torch's default), which ``OMP_NUM_THREADS`` lowers.

Float32 equality: :func:`assert_close_to_float64` is the check to use when an fp32 result should
equal another computation up to rounding. Its tolerance is derived from a float64 computation of
the same thing, never a fixed number that one CPU kind (AVX2, AVX512, AMX) happens to meet.
"""

import importlib.util
import os
from pathlib import Path

import open_clip
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO / "configs" / "clip_models"
TINY_VIT = "tiny-vit"
TINY_CONVNEXT = "tiny-convnext"

# Nothing in the test suite may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(
    int(os.environ.get("PIXELCLIP_TEST_THREADS", 0)) or min(2, torch.get_num_threads())
)
open_clip.add_model_config(MODEL_CONFIGS)


def load_script(path: str | Path, name: str):
    """Import a script of the repository that is not in a package (tools/, demo/, datasets/).

    Args:
        path: the script, relative to the repository root (or absolute).
        name: the module name to give it.
    """
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FLOAT32_EPS = torch.finfo(torch.float32).eps
# How far (in float32 epsilons of the largest value) the fp32 reference may be from the float64
# one before the two are taken for different computations rather than for rounding: loose, it is
# only there so that a wrong float64 reference cannot inflate the tolerance into a void check.
_SAME_COMPUTATION_EPS = 2.0**13


def assert_close_to_float64(actual, ref64, fp32_ref=None, *, factor=4.0, terms=1, msg=""):
    """Assert that the fp32 ``actual`` equals ``ref64`` up to float32 rounding.

    ``ref64`` is the same quantity computed in float64 (e.g. ``copy.deepcopy(model).double()``
    on ``.double()`` inputs), ``fp32_ref`` the reference fp32 computation of it (the code path
    ``actual`` should agree with, e.g. the full context when ``actual`` is the truncated one).
    The allowed absolute error is derived from the fp32 error actually made by the reference::

        tol = factor * (max|fp32_ref - ref64| + terms * eps32 * max|ref64|)

    so ``actual`` may be ``factor`` times less accurate than the reference path, plus a floor of
    ``terms`` float32 epsilons of the largest value (for sums of ``terms`` rounded values, or
    when the reference happens to be exact). With ``fp32_ref=None`` only the floor remains: use
    that for a result against an exact formula, ``terms`` bounding the number of rounded
    operations. Two fp32 paths are then within ``2 * tol`` of each other. The tolerance is one
    number for the whole tensor (absolute, in units of its largest value): rounding errors of
    a cancelling sum are not relative to the small result.

    Also checks that ``fp32_ref`` is within ``2**13`` epsilons of ``ref64`` (relative to the
    largest value), i.e. that the float64 reference really computes the same thing.

    Returns:
        The tolerance used (a float).
    """
    actual, ref64 = torch.as_tensor(actual), torch.as_tensor(ref64)
    assert actual.shape == ref64.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(ref64.shape)}"
    assert ref64.dtype == torch.float64, f"{msg} the reference must be float64, got {ref64.dtype}"
    ref64 = ref64.detach().cpu()
    scale = float(ref64.abs().max()) if ref64.numel() else 0.0
    ref_err = 0.0
    if fp32_ref is not None:
        fp32_ref = torch.as_tensor(fp32_ref).detach().cpu()
        assert fp32_ref.shape == ref64.shape, f"{msg} fp32_ref shape {tuple(fp32_ref.shape)}"
        ref_err = float((fp32_ref.double() - ref64).abs().max()) if ref64.numel() else 0.0
        assert ref_err <= _SAME_COMPUTATION_EPS * FLOAT32_EPS * scale, (
            f"{msg} the fp32 reference is {ref_err:.3g} from float64 (largest value {scale:.3g}):"
            " not the same computation"
        )
    tol = factor * (ref_err + terms * FLOAT32_EPS * scale)
    err = float((actual.detach().cpu().double() - ref64).abs().max()) if ref64.numel() else 0.0
    assert err <= tol, (
        f"{msg} max|actual - float64| = {err:.3g} > tolerance {tol:.3g} = {factor} x (fp32 "
        f"reference error {ref_err:.3g} + {terms} x eps32 x largest value {scale:.3g})"
    )
    return tol


def make_tiny_clip(name: str = TINY_VIT, seed: int = 0):
    """A tiny open_clip CLIP with random weights, deterministic under ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
    return model.eval()


@pytest.fixture(params=[TINY_VIT, TINY_CONVNEXT])
def tiny_clip_name(request) -> str:
    """Both backbone families, by model name."""
    return request.param


@pytest.fixture
def tiny_vit():
    return make_tiny_clip(TINY_VIT)


@pytest.fixture
def tiny_convnext():
    return make_tiny_clip(TINY_CONVNEXT)


@pytest.fixture
def tokenizer():
    return open_clip.get_tokenizer(TINY_VIT)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo what a test's entry point did to the loggers (``pixelclip.logs.setup_logging`` stops
    propagation, which would hide later tests' records from ``caplog``)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("", "detectron2", "fvcore", "pixelclip")]
    saved = [(lg, list(lg.handlers), lg.propagate, lg.level, list(lg.filters)) for lg in loggers]
    yield
    for logger, handlers, propagate, level, filters in saved:
        logger.handlers[:] = handlers
        logger.propagate, logger.level, logger.filters[:] = propagate, level, filters


@pytest.fixture
def catalog_restored():
    """Tests re-register the benchmarks at a tmp root; put the default registration back after."""
    yield
    from pixelclip.data.benchmarks import register_all_benchmarks

    register_all_benchmarks()
