"""detectron2 trainer for PixelCLIP: the builders ``tools/train_net.py`` delegates to.

Differences from ``DefaultTrainer``: PixelCLIP's optimizer (LR multipliers, full-model gradient
clipping), the SA-1B training mapper, SemSegEvaluator on every test dataset with that dataset's
class names as the vocabulary, and DDP that also works on CPU with gloo (detectron2's default
passes ``device_ids`` to DDP, which CPU processes refuse).
"""

from __future__ import annotations

import argparse
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng

from ..checkpoint import PixelCLIPCheckpointer, build_model_from_checkpoint, write_atomically
from ..config import build_config
from ..config_checks import validate_config
from ..data.mapper import SA1BDatasetMapper
from ..data.sa1b import register_sa1b_from_config
from ..evaluation.sem_seg import CheckedSemSegEvaluator
from ..logs import setup_logging
from ..solver import build_optimizer
from .resume import DeterministicResumeHook, build_resumable_train_loader

logger = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """DDP over all processes when there are several: on CUDA with the local device, on CPU
    (gloo) without ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with PixelCLIP's builders (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logging()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = PixelCLIPCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_partial=cfg.MODEL.PIXELCLIP.ALLOW_PARTIAL_WEIGHTS,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        # A sampler that --resume can fast-forward (detectron2's restarts from its first index).
        return build_resumable_train_loader(cfg, mapper=SA1BDatasetMapper(cfg, is_train=True))

    def build_hooks(self):
        hooks = super().build_hooks()
        loader = self._trainer.data_loader
        sampler = getattr(loader, "resumable_sampler", None)
        seed = getattr(loader, "data_seed", self.cfg.SEED)
        dataset = getattr(loader, "seeded_dataset", None)
        resume = DeterministicResumeHook(sampler, self.cfg.SOLVER.IMS_PER_BATCH, seed, dataset)
        return [resume, *hooks]

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """SemSegEvaluator that checks every label map first (values, size, channels), so a bad
        benchmark stops with an error naming the file instead of giving wrong metrics."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return CheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on every dataset of ``cfg.DATASETS.TEST``. Unless a vocabulary is fixed by
        MODEL.PIXELCLIP.TEST.VOCABULARY(_FILE), each dataset is segmented with its own
        ``stuff_classes``."""
        from ..evaluation.presets import background_index
        from ..inference.readout import ReadoutModel, readout_settings

        fixed_vocabulary = bool(
            cfg.MODEL.PIXELCLIP.TEST.VOCABULARY or cfg.MODEL.PIXELCLIP.TEST.VOCABULARY_FILE
        )
        settings = readout_settings(cfg)  # READOUT, PROB_THRESHOLD, PAMR_* (default: plain)
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            if not fixed_vocabulary:
                unwrap(model).vocabulary_for(dataset_name)
            runner = model
            if not settings.is_plain:
                classes = unwrap(model).vocabulary
                runner = ReadoutModel(model, classes, settings, background_index(dataset_name))
            loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = evaluators[index] if evaluators else cls.build_evaluator(cfg, dataset_name)
            results[dataset_name] = inference_on_dataset(runner, loader, evaluator)
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(results[dataset_name])
        return results[next(iter(results))] if len(results) == 1 else results


def build_eval_model(cfg: CfgNode, resume: bool = False) -> torch.nn.Module:
    """The model ``--eval-only`` evaluates: from the last checkpoint of ``OUTPUT_DIR`` with
    ``resume``, else from ``MODEL.WEIGHTS`` (a checkpoint is all it needs, see
    :func:`~pixelclip.checkpoint.build_model_from_checkpoint`); with neither, plain CLIP."""
    path = cfg.MODEL.WEIGHTS
    probe = PixelCLIPCheckpointer(torch.nn.Module(), cfg.OUTPUT_DIR)
    if resume and probe.has_checkpoint():
        path = probe.resumable_checkpoint()
    if not path:
        logger.warning("no checkpoint (MODEL.WEIGHTS is empty): evaluating plain CLIP")
        return Trainer.build_model(cfg)
    return build_model_from_checkpoint(cfg, path)


def check_output_dir(cfg: CfgNode, args) -> None:
    """Refuse to start training from scratch over the checkpoints of an earlier run.

    Raises:
        ValueError: ``cfg.OUTPUT_DIR`` has a ``last_checkpoint`` and neither ``--resume``,
            ``--eval-only`` nor ``--overwrite`` was given.
    """
    if args.eval_only or args.resume or getattr(args, "overwrite", False):
        return
    tag = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if os.path.isfile(tag):
        with open(tag, encoding="utf-8", errors="replace") as f:
            last = f.read().strip()
        raise ValueError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} already holds a run (last checkpoint: {last}); pass "
            "--resume to continue it, --overwrite to train again from scratch, or choose "
            "another OUTPUT_DIR"
        )


def _config_with_preset(args) -> CfgNode:
    """``args.config_file``, the defaults of ``args.preset`` (if any; its benchmarks become
    DATASETS.TEST), then ``args.opts``: the command line's keys win over the preset's."""
    preset_name = getattr(args, "preset", None)
    if not preset_name:
        return build_config(args.config_file, args.opts)
    from ..config import resolve_config_paths
    from ..evaluation.presets import apply_preset, explicit_keys, get_preset

    preset = get_preset(preset_name)
    explicit = explicit_keys(args.opts)
    cfg = build_config(args.config_file)
    apply_preset(cfg, preset, explicit)
    if "DATASETS.TEST" not in explicit:
        cfg.DATASETS.TEST = tuple(preset.benchmarks)
    cfg.merge_from_list(list(args.opts))
    resolve_config_paths(cfg, args.config_file)
    return cfg


def setup(args) -> CfgNode:
    """Config from ``args.config_file``, ``--preset`` and ``args.opts`` (detectron2's argument
    parser), frozen, with detectron2's default set-up (logging, output folder, seeding)."""
    if getattr(args, "preset", None) and not args.eval_only:
        raise ValueError("--preset sets an evaluation protocol: use it with --eval-only")
    cfg = _config_with_preset(args)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE is %r but CUDA is not available: using the CPU", cfg.MODEL.DEVICE
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    validate_config(cfg, training=not args.eval_only)
    check_output_dir(cfg, args)
    start_run(cfg, args)
    register_sa1b_from_config(cfg)
    return cfg


def start_run(cfg: CfgNode, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup`` (logging, the run's report, ``OUTPUT_DIR/config.yaml``,
    seeding, cuDNN benchmark), done so that the log has each line once and no ANSI codes: logging
    through :func:`pixelclip.logs.setup_logging` (``default_setup`` adds handlers on every call and
    syntax-highlights the config in log.txt too), and config.yaml written atomically."""
    rank, output_dir = comm.get_rank(), cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logging(output=output_dir, rank=rank)
    report = logging.getLogger("detectron2")  # the logger detectron2's own report goes to
    report.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    report.info("Environment info:\n%s", collect_env_info())
    report.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        text = open(args.config_file, encoding="utf-8", errors="replace").read()
        report.info("Contents of args.config_file=%s:\n%s", args.config_file, text)
    if comm.is_main_process() and output_dir:
        path, text = os.path.join(output_dir, "config.yaml"), cfg.dump()
        report.info("Running with full config:\n%s", text)
        write_atomically(path, lambda f: f.write(text.encode("utf-8")))
        report.info("Full config saved to %s", path)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def build_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``tools/train_net.py``: detectron2's argument parser plus ``--preset`` and
    ``--overwrite``."""
    parser = default_argument_parser(epilog=epilog)
    from ..evaluation.presets import PRESETS

    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="with --eval-only: evaluate with this protocol preset (its benchmarks, test sizes, "
        "readout, thresholds, class names; KEY VALUE pairs win) and write results.json / "
        "results.md into OUTPUT_DIR (see tools/evaluate_all.py --help)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train from scratch even if OUTPUT_DIR holds checkpoints of an earlier run "
        "(without it, such a folder needs --resume)",
    )
    return parser


def train_net(args: argparse.Namespace):
    """Train (or with ``--eval-only`` evaluate) in this process, as ``tools/train_net.py`` does
    in each process it launches; returns the evaluation results."""
    cfg = setup(args)
    if args.eval_only and getattr(args, "preset", None):
        from ..evaluation.evaluate_all import evaluate_and_record

        model = build_eval_model(cfg, resume=args.resume)
        return evaluate_and_record(cfg, model, args.preset, args.opts)
    if args.eval_only:
        if not cfg.DATASETS.TEST:
            raise ValueError(
                f"--eval-only: DATASETS.TEST is empty in {args.config_file}, so there is nothing "
                "to evaluate; name the datasets, e.g. DATASETS.TEST '(\"toyworld_test_sem_seg\",)'"
            )
        return Trainer.test(cfg, build_eval_model(cfg, resume=args.resume))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
