"""Shared fixtures: tiny open_clip models with random weights, built offline in well under a second.

The model configs live in ``configs/clip_models/`` (the quick-schedule configs use them too). They
mirror the real architectures (a QuickGELU ViT with 16-pixel patches; a ConvNeXt tower with a
timm trunk and a linear head) at a tiny width, with CLIP's real tokenizer vocabulary.
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
torch.set_num_threads(min(2, torch.get_num_threads()))
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
