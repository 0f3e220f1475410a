"""A trained checkpoint plus its config.yaml is all inference and evaluation need, from any
folder: no pre-trained CLIP or DINO file, no relative path that only works in the checkout."""

import argparse
import logging
import shutil

import numpy as np
import torch
from conftest import MODEL_CONFIGS, make_tiny_clip
from detectron2.modeling import build_model
from test_meta_arch import tiny_cfg
from test_predictor import SETTINGS, VOCAB, smooth_image

from pixelclip.checkpoint import PixelCLIPCheckpointer
from pixelclip.config import build_config, resolve_config_paths
from pixelclip.engine import build_eval_model, setup
from pixelclip.inference.predictor import Predictor


def _run_folder(tmp_path):
    """A finished run trained from a CLIP weight file and DINO masks, then both files deleted."""
    clip_file = tmp_path / "weights" / "tiny_clip.pt"
    clip_file.parent.mkdir()
    torch.save(make_tiny_clip("tiny-vit", seed=2).state_dict(), clip_file)
    dino = {"INPUT.MASK_SOURCE": "dino", "MODEL.DINO.RESOLUTION": 64,
            "MODEL.DINO.NUM_CLUSTERS": 4, "MODEL.DINO.WEIGHTS": ""}  # fmt: skip
    cfg = tiny_cfg(**SETTINGS, **dino, **{"MODEL.CLIP.PRETRAINED": str(clip_file)})
    torch.manual_seed(3)
    trained = build_model(cfg).eval()
    with torch.no_grad():  # "training" moved the prompts and the image tower
        trained.sem_seg_head.prompts.prompt_tokens.add_(0.5)
        for p in trained.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    run = tmp_path / "run"
    cfg.defrost()
    cfg.MODEL.DINO.WEIGHTS = str(tmp_path / "weights" / "dino.pth")  # as on the training machine
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump())
    PixelCLIPCheckpointer(trained, str(run)).save("model_final")
    shutil.rmtree(tmp_path / "weights")
    return run, trained


def test_a_checkpoint_and_its_config_are_all_inference_needs(tmp_path, monkeypatch, caplog):
    run, trained = _run_folder(tmp_path)
    image = smooth_image(0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with caplog.at_level(logging.INFO, logger="pixelclip"):
        predictor = Predictor(run / "model_final.pth", vocabulary=VOCAB)
    assert f"Loading checkpoint {run / 'model_final.pth'}" in caplog.text
    assert "MODEL.CLIP.PRETRAINED" in caplog.text and "is not read" in caplog.text
    for key, value in predictor.model.state_dict().items():  # nothing left at its random init
        assert torch.equal(value, trained.state_dict()[key]), key
    trained.set_vocabulary(VOCAB)
    got = predictor(image)["sem_seg"]
    assert got.shape == (len(VOCAB), *image.shape[:2]) and torch.isfinite(got).all()

    cfg = build_config(run / "config.yaml")  # --eval-only MODEL.WEIGHTS run/model_final.pth
    cfg.MODEL.WEIGHTS = str(run / "model_final.pth")
    model = build_eval_model(cfg)
    assert model.mask_generator is None  # the DINO masker is a training input
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key
    cfg.OUTPUT_DIR = str(run)  # --eval-only --resume: the last checkpoint of the run
    cfg.MODEL.WEIGHTS = ""
    resumed = build_eval_model(cfg, resume=True)
    assert torch.equal(resumed.sem_seg_head.prompts.prompt_tokens,
                       trained.sem_seg_head.prompts.prompt_tokens)  # fmt: skip


def test_relative_paths_are_resolved_from_any_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs" / "clip_models").mkdir(parents=True)
    (project / "configs" / "runs").mkdir()
    shutil.copy(MODEL_CONFIGS / "tiny-vit.json", project / "configs" / "clip_models")
    (project / "names.json").write_text('["a", "b"]')
    config = project / "configs" / "runs" / "x.yaml"
    config.write_text(
        "MODEL:\n  CLIP:\n    MODEL_NAME: tiny-vit\n"
        "    MODEL_CONFIG: configs/clip_models/tiny-vit.json\n    PRETRAINED: openai\n"
        "  PIXELCLIP:\n    TEST:\n      VOCABULARY_FILE: names.json\n"
        "DATASETS:\n  SA1B:\n    ROOT: no/such/folder\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = build_config(config)
    assert cfg.MODEL.CLIP.MODEL_CONFIG == str(project / "configs/clip_models/tiny-vit.json")
    assert cfg.MODEL.PIXELCLIP.TEST.VOCABULARY_FILE == str(project / "names.json")
    assert cfg.MODEL.CLIP.PRETRAINED == "openai"  # an open_clip tag, not a path
    assert cfg.DATASETS.SA1B.ROOT == "no/such/folder"  # found nowhere: left for its error
    (tmp_path / "names.json").write_text('["c"]')  # the working directory comes first
    assert build_config(config).MODEL.PIXELCLIP.TEST.VOCABULARY_FILE == str(tmp_path / "names.json")
    cfg.MODEL.CLIP.MODEL_CONFIG = "/abs/untouched.json"
    resolve_config_paths(cfg)
    assert cfg.MODEL.CLIP.MODEL_CONFIG == "/abs/untouched.json"


def test_the_saved_config_of_a_run_holds_absolute_paths(tmp_path, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    config = REPO / "configs" / "quick_schedules" / "pixelclip_tiny_vit_cpu.yaml"
    opts = ["OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", "()"]
    args = argparse.Namespace(
        config_file=str(config), eval_only=False, resume=False, opts=opts, num_gpus=1,
        num_machines=1, machine_rank=0, dist_url="auto",
    )  # fmt: skip
    setup(args)
    saved = build_config(tmp_path / "out" / "config.yaml")
    assert saved.MODEL.CLIP.MODEL_CONFIG == str(REPO / "configs/clip_models/tiny-vit.json")
    assert np.isclose(saved.SOLVER.BASE_LR, build_config(config).SOLVER.BASE_LR)
