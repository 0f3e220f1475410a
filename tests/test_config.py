"""Every config file merges, and every key PixelCLIP adds is read somewhere in the code."""

from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from pixelclip.config import add_pixelclip_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(
    p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("Base-")
)


def _flatten(node: CfgNode, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def pixelclip_cfg() -> CfgNode:
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    return cfg


def test_config_files_exist():
    names = {p.name for p in CONFIG_FILES}
    for expected in [
        "pixelclip_vitb16_sa1b_bs48_10k.yaml",
        "pixelclip_vitb16_dino_bs48_10k.yaml",
        "pixelclip_convnextb_sa1b_bs48_10k.yaml",
        "pixelclip_convnextb_dino_bs48_10k.yaml",
    ]:
        assert expected in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_file_merges(path):
    cfg = pixelclip_cfg()
    cfg.merge_from_file(str(path))  # raises on any unknown key
    assert cfg.MODEL.META_ARCHITECTURE == "PixelCLIP"


def test_reference_hyper_parameters():
    cfg = pixelclip_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "pixelclip_vitb16_sa1b_bs48_10k.yaml"))
    assert cfg.SOLVER.IMS_PER_BATCH == 48 and cfg.SOLVER.MAX_ITER == 10000
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.BASE_LR == 2e-4
    assert cfg.SOLVER.BASE_LR_END == 1e-4 and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
    assert cfg.SOLVER.WARMUP_ITERS == 0 and cfg.SOLVER.WEIGHT_DECAY == 1e-4
    assert (cfg.SOLVER.CLIP_MULTIPLIER, cfg.SOLVER.PROMPT_MULTIPLIER) == (0.01, 10.0)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.INPUT.MIN_SIZE_TRAIN == (1024,) and tuple(cfg.INPUT.CROP.SIZE) == (640, 640)
    assert cfg.MODEL.CLIP.RESOLUTION == 320 and cfg.MODEL.PIXELCLIP.TEMPERATURE == 100.0
    assert cfg.MODEL.PROMPT.NUM_CLUSTERS == 64 and cfg.MODEL.PROMPT.LENGTH == 4
    assert cfg.MODEL.PIXELCLIP.MOMENTUM == 0.999 and cfg.INPUT.MIN_SIZE_TEST == 640
    convnext = pixelclip_cfg()
    convnext.merge_from_file(str(REPO / "configs" / "pixelclip_convnextb_sa1b_bs48_10k.yaml"))
    assert convnext.MODEL.CLIP.RESOLUTION == 640 and convnext.MODEL.PIXELCLIP.TEMPERATURE == 1.0
    assert convnext.MODEL.CLIP.FINETUNE == "full"


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        '_BASE_: "%s"\nMODEL:\n  CLIP:\n    NOT_A_KEY: 1\n'
        % (REPO / "configs" / "Base-PixelCLIP.yaml")
    )
    with pytest.raises(KeyError, match="NOT_A_KEY"):
        pixelclip_cfg().merge_from_file(str(bad))


def test_every_added_key_is_read_somewhere():
    before = set(_flatten(get_cfg()))
    added = sorted(set(_flatten(pixelclip_cfg())) - before)
    assert len(added) > 20
    sources = [
        p
        for folder in ("pixelclip", "tools", "demo")
        for p in (REPO / folder).rglob("*.py")
        if p.name != "config.py"
    ]
    text = "\n".join(p.read_text() for p in sources)
    unread = [key for key in added if key not in text]
    assert not unread, f"config keys never read by the code: {unread}"
