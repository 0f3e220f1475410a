"""Config values PixelCLIP relies on are checked at start-up, naming the key (before training)."""

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from pixelclip.config import add_pixelclip_config
from pixelclip.config_checks import validate_config


def _cfg(**overrides):
    cfg = get_cfg()
    add_pixelclip_config(cfg)
    cfg.DATASETS.TEST = ()
    for key, value in overrides.items():
        if isinstance(value, str):
            cfg.merge_from_list([key, value])
        else:  # a value merge_from_list cannot spell (nan)
            *path, last = key.split(".")
            node = cfg
            for part in path:
                node = node[part]
            node[last] = value
    return cfg


def test_the_defaults_and_the_shipped_recipe_values_pass():
    validate_config(_cfg(), training=True)
    validate_config(_cfg(**{"SOLVER.BASE_LR": "0.0002", "SOLVER.BASE_LR_END": "0.0001"}),
                    training=True)  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("SOLVER.BASE_LR", "0.0", "expected a number > 0"),
        ("SOLVER.BASE_LR_END", "0.5", "expected a number >= 0 and <= 0.001"),
        ("SOLVER.BASE_LR_END", "-1.0", ">= 0"),
        ("SOLVER.PROMPT_MULTIPLIER", "-1.0", ">= 0"),
        ("SOLVER.MAX_ITER", "0", "expected an integer >= 1"),
        ("SOLVER.IMS_PER_BATCH", "0", "expected an integer >= 1"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "expected an integer >= 1"),
        ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0", "> 0"),
        ("SOLVER.WEIGHT_DECAY", float("nan"), "expected a number >= 0"),
        ("INPUT.MIN_SIZE_TRAIN", "(0,)", "INPUT.MIN_SIZE_TRAIN[0] = 0"),
        ("INPUT.CROP.SIZE", "(640,)", "expected 2 values"),
        ("INPUT.STRONG_AUG.BLUR_PROB", "1.5", "<= 1"),
        ("INPUT.STRONG_AUG.GRAYSCALE_PROB", "-0.1", ">= 0"),
        ("INPUT.STRONG_AUG.COLOR_JITTER", "[0.5, 0.5, 0.5, 0.9]", "COLOR_JITTER[3] = 0.9"),
        ("INPUT.STRONG_AUG.BLUR_SIGMA", "[2.0, 0.1]", "min <= max"),
        ("INPUT.STRONG_AUG.CUTOUT_SCALE", "[0.1, 1.5]", "CUTOUT_SCALE[1] = 1.5"),
        ("MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]", "MODEL.PIXEL_STD[1] = 0.0: expected a number > 0"),
        ("MODEL.PIXEL_MEAN", "[1.0, 2.0]", "expected 3 values"),
        ("INPUT.MAX_SIZE_TEST", "0", "> 0"),
    ],
)
def test_bad_values_name_the_key_and_what_is_expected(key, value, expected):
    cfg = _cfg(
        **{"SOLVER.CLIP_GRADIENTS.ENABLED": "True", "INPUT.CROP.ENABLED": "True", key: value}
    )
    with pytest.raises(ValueError, match="invalid config") as info:
        validate_config(cfg, training=True)
    assert key.split(".")[-1] in str(info.value) and expected in str(info.value)


def test_all_problems_are_reported_at_once_and_training_keys_only_when_training():
    cfg = _cfg(**{"SOLVER.BASE_LR": "0.0", "SOLVER.MAX_ITER": "0"})
    with pytest.raises(ValueError) as info:
        validate_config(cfg, training=True)
    assert "SOLVER.BASE_LR = 0.0" in str(info.value) and "SOLVER.MAX_ITER = 0" in str(info.value)
    validate_config(cfg, training=False)  # evaluation does not read the solver


@pytest.fixture
def tiny_dataset(tmp_path):
    name = "config_checks_tiny"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"])
    missing = "config_checks_unprepared"

    def unprepared():
        raise FileNotFoundError(f"no label folder {tmp_path / 'gt'}")

    DatasetCatalog.register(missing, unprepared)
    yield name, missing
    DatasetCatalog.remove(name)
    DatasetCatalog.remove(missing)
    MetadataCatalog.remove(name)


def test_test_datasets_are_resolved_at_start_up(tiny_dataset):
    name, missing = tiny_dataset
    validate_config(_cfg(**{"DATASETS.TEST": f"('{name}',)"}), training=True)
    with pytest.raises(ValueError, match="'no_such_benchmark' is not a registered dataset"):
        validate_config(_cfg(**{"DATASETS.TEST": "('no_such_benchmark',)"}), training=True)
    with pytest.raises(ValueError, match=f"'{missing}' is not prepared .*no label folder"):
        validate_config(_cfg(**{"DATASETS.TEST": f"('{missing}',)"}), training=False)
    validate_config(_cfg(**{"DATASETS.TEST": f"('{missing}',)"}), training=False, datasets=False)


def test_a_fixed_vocabulary_must_match_the_test_classes(tiny_dataset, tmp_path):
    name, _ = tiny_dataset
    ok = {"DATASETS.TEST": f"('{name}',)", "MODEL.PIXELCLIP.TEST.VOCABULARY": "['x', 'y', 'z']"}
    validate_config(_cfg(**ok), training=False)
    bad = {**ok, "MODEL.PIXELCLIP.TEST.VOCABULARY": "['x', 'y']"}
    with pytest.raises(ValueError, match=r"TEST.VOCABULARY: 2 classes, but test dataset .* has 3"):
        validate_config(_cfg(**bad), training=False)
    vocabulary = tmp_path / "names.json"
    vocabulary.write_text('["x", "y", "z", "w"]')
    bad = {"DATASETS.TEST": f"('{name}',)", "MODEL.PIXELCLIP.TEST.VOCABULARY_FILE": str(vocabulary)}
    with pytest.raises(ValueError, match=r"TEST.VOCABULARY_FILE: 4 classes"):
        validate_config(_cfg(**bad), training=False)


def test_eval_only_without_test_datasets_says_so(tmp_path):
    """A run's config.yaml with ``DATASETS.TEST ()`` (the quickstart trains so) evaluates nothing:
    ``--eval-only`` says what to add instead of ending silently."""
    import argparse

    from conftest import REPO

    from pixelclip.engine import train_net

    args = argparse.Namespace(
        config_file=str(REPO / "configs/quick_schedules/pixelclip_tiny_vit_cpu.yaml"),
        eval_only=True,
        resume=False, overwrite=False, num_gpus=1,
        opts=["DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"--eval-only: DATASETS\.TEST is empty.*DATASETS\.TEST"):
        train_net(args)
