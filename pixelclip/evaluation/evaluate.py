"""Evaluate a PixelCLIP model on several semantic-segmentation benchmarks (docs/METHOD.md §9).

:func:`evaluate` mirrors :meth:`pixelclip.engine.Trainer.test` (detectron2's
``inference_on_dataset`` with a ``SemSegEvaluator`` per dataset, the model's vocabulary set to each
dataset's ``stuff_classes``) and adds what a benchmark sweep needs:

* a benchmark whose files are missing is reported (``status="missing"`` with the loader's message,
  which names the expected folder and the prepare script) instead of stopping the sweep;
* ``max_images`` evaluates the first N images of each benchmark only (a quick check; the result
  records that it is a subset);
* the test-time resize per protocol and benchmark (:func:`evaluation_resize`).

Test-time resize (shortest edge, longest-edge cap), applied by detectron2's test mapper before the
model sees the image; predictions are scored at the original size:

* "whole" (the reference protocol): ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST`` of the
  config (640 / 2560 in ``Base-PixelCLIP.yaml``);
* "slide" (training-free peers: SCLIP, NACLIP, ProxyCLIP): shortest edge 336, 448 for Cityscapes
  (METHOD.md §9), longest edge at most 2048 as in their mmseg pipelines
  (``Resize(scale=(2048, 336), keep_ratio=True)``); windows of ``MODEL.PIXELCLIP.TEST.SLIDE_CROP``
  with stride ``SLIDE_STRIDE`` (224 / 112 by default).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

if TYPE_CHECKING:
    from .presets import Preset

logger = logging.getLogger(__name__)

__all__ = [
    "SLIDE_TEST_SIZE",
    "SLIDE_TEST_SIZE_BY_DATASET",
    "class_group_mious",
    "evaluate",
    "find_missing_datasets",
    "subset_miou",
    "evaluation_resize",
]

# (shortest edge, longest-edge cap) of the test image under the "slide" protocol.
SLIDE_TEST_SIZE: tuple[int, int] = (336, 2048)
SLIDE_TEST_SIZE_BY_DATASET: dict[str, tuple[int, int]] = {
    "cityscapes_19_val_sem_seg": (448, 2048),
}


def evaluation_resize(
    cfg: CfgNode, dataset_name: str, test_size: int | None = None
) -> tuple[int, int]:
    """Test-time (shortest edge, longest-edge cap) for a dataset under the config's protocol.

    Args:
        cfg: config with ``MODEL.PIXELCLIP.TEST.PROTOCOL`` and ``INPUT.MIN/MAX_SIZE_TEST``.
        dataset_name: registered dataset name (Cityscapes gets its own "slide" size).
        test_size: if given, the shortest edge for every dataset (overrides the protocol's).

    Returns:
        ``(min_size, max_size)`` for detectron2's ``ResizeShortestEdge``; ``min_size`` 0 means
        no resize.
    """
    protocol = cfg.MODEL.PIXELCLIP.TEST.PROTOCOL
    if protocol == "whole":
        size = (int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))
    elif protocol == "slide":
        size = SLIDE_TEST_SIZE_BY_DATASET.get(dataset_name, SLIDE_TEST_SIZE)
    else:
        raise ValueError(
            f"unknown MODEL.PIXELCLIP.TEST.PROTOCOL {protocol!r}; choose from ['whole', 'slide']"
        )
    if test_size is not None:
        if test_size < 0:
            raise ValueError(f"test_size must be >= 0 (0 = no resize), got {test_size}")
        size = (int(test_size), size[1])
    return size


def _config_for(cfg: CfgNode, size: tuple[int, int]) -> CfgNode:
    """A copy of ``cfg`` whose test mapper resizes to ``size``."""
    out = cfg.clone()
    out.defrost()
    out.INPUT.MIN_SIZE_TEST, out.INPUT.MAX_SIZE_TEST = size
    out.freeze()
    return out


def _register_subset(name: str, dicts: list[dict]) -> str:
    """Register the given dataset dicts under a temporary name with ``name``'s metadata."""
    subset = f"{name}__first{len(dicts)}"
    if subset in DatasetCatalog.list():
        DatasetCatalog.remove(subset)
        MetadataCatalog.remove(subset)
    metadata = MetadataCatalog.get(name).as_dict()
    metadata.pop("name", None)
    DatasetCatalog.register(subset, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(subset).set(**metadata)
    return subset


def _unregister(name: str) -> None:
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def find_missing_datasets(dataset_names: Sequence[str]) -> dict[str, str]:
    """``{name: message}`` of the datasets whose loader raises ``FileNotFoundError`` (their
    folders are missing or empty); lists the files of the others, opens none."""
    missing = {}
    for name in dataset_names:
        try:
            DatasetCatalog.get(name)
        except FileNotFoundError as e:
            missing[name] = str(e)
    return missing


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict:
    """Peak memory of the run: CUDA memory allocated by torch on a GPU, else the peak resident
    set size of this process (``resource.getrusage``; never reset, so the peak so far)."""
    if device.type == "cuda":
        value, kind = torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    else:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value = rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
        kind = "cpu_peak_rss_of_process"
    return {"peak_memory_mb": round(value / 2**20, 1), "peak_memory_kind": kind}


def _window(cfg: CfgNode) -> dict:
    test = cfg.MODEL.PIXELCLIP.TEST
    if test.PROTOCOL == "slide":
        return {"protocol": "slide", "crop": int(test.SLIDE_CROP), "stride": int(test.SLIDE_STRIDE)}
    return {
        "protocol": "whole",
        "clip_resolution": int(cfg.MODEL.CLIP.RESOLUTION),
        "feature_resolution": int(test.FEATURE_RESOLUTION),
    }


def evaluate(
    cfg: CfgNode,
    model: torch.nn.Module | None,
    dataset_names: Sequence[str],
    *,
    max_images: int | None = None,
    test_size: int | None = None,
    output_dir: str | None = None,
    preset: str | Preset = "paper",
    explicit: Iterable[str] = (),
) -> dict[str, dict]:
    """Evaluate ``model`` on each dataset with detectron2's ``SemSegEvaluator``.

    Missing datasets (their loader raises ``FileNotFoundError``) are logged and reported, and the
    others still run. Works in every process of a detectron2 ``launch``: the evaluator gathers
    the confusion matrices of all ranks; metrics are returned on the main process only.

    Args:
        cfg: the config the model was built from, with the preset applied
            (:func:`pixelclip.evaluation.presets.apply_preset`): protocol, test sizes, readout,
            PAMR, data loader settings; ``MODEL.PIXELCLIP.TEST.VOCABULARY(_FILE)``, if set,
            replaces each dataset's classes as in ``Trainer.test``.
        model: a PixelCLIP model (or one wrapped in DistributedDataParallel); may be None when
            every dataset is missing.
        dataset_names: registered sem-seg datasets (e.g. ``"ade20k_150_val_sem_seg"``).
        max_images: evaluate only the first N images of each dataset, in the order of its
            dataset dicts (None or 0 = all).
        test_size: shortest test edge for every dataset (None: the preset's, else
            :func:`evaluation_resize`).
        output_dir: evaluator outputs go to ``output_dir/inference/<name>`` (None =
            ``cfg.OUTPUT_DIR/inference/<name>``, as in ``Trainer.build_evaluator``).
        preset: the protocol preset (its per-benchmark test sizes, thresholds, class names).
        explicit: config keys given on the command line; they win over the preset's
            per-benchmark values (:func:`pixelclip.evaluation.presets.benchmark_setup`).

    Returns:
        ``{name: entry}`` in the given order, each entry a JSON-able dict: ``status`` ("ok" or
        "missing"), ``error`` (the loader's message, "" when ok), ``metrics`` (SemSegEvaluator's
        output: "mIoU", "fwIoU", "mACC", "pACC", "IoU-<class>", "ACC-<class>", ... in percent;
        empty on non-main ranks and for missing datasets), ``mIoU`` and ``per_class_iou``
        (``{class: IoU}``, None for a class absent from the labels), ``num_images`` (evaluated),
        ``num_images_total`` (in the dataset), ``subset`` (True when only the first
        ``max_images`` were evaluated), ``preset``, ``test_size`` ([shortest edge, longest-edge
        cap]), ``window`` (protocol and its sizes), ``readout``, ``prob_threshold`` (applied,
        0 = none), ``background`` (class index or None), ``pamr`` (None = off, else steps and
        dilations), ``prompt_ensemble``, ``vocabulary`` (the class-name source), ``num_queries``,
        ``seconds``, ``images_per_second``, ``peak_memory_mb`` and ``peak_memory_kind``.
    """
    # Imported here: the engine may come to import this module (Trainer.test), not the reverse.
    from ..engine.trainer import Trainer, unwrap
    from ..inference.readout import ReadoutModel, readout_settings
    from .presets import benchmark_setup, get_preset

    preset = get_preset(preset) if isinstance(preset, str) else preset
    explicit = set(explicit)
    results: dict[str, dict] = OrderedDict()
    for name in dataset_names:
        entry = {
            "status": "ok",
            "error": "",
            "metrics": {},
            "mIoU": None,
            "per_class_iou": {},
            "num_images": 0,
            "num_images_total": 0,
            "subset": False,
            "preset": preset.name,
        }
        results[name] = entry
        try:
            dicts = DatasetCatalog.get(name)
        except FileNotFoundError as e:
            logger.error("benchmark %s is missing, skipped: %s", name, e)
            entry.update(status="missing", error=str(e))
            entry["test_size"] = list(evaluation_resize(cfg, name, test_size))
            continue
        if model is None:
            raise ValueError(f"evaluate: model is None, but dataset {name!r} is available")
        setup = benchmark_setup(cfg, preset, name, explicit, test_size)
        settings = readout_settings(
            cfg, prob_threshold=setup.prob_threshold if setup.background is not None else 0.0
        )
        inner = unwrap(model)
        if setup.class_names is not None:
            inner.set_vocabulary(setup.class_names)
        runner = model
        if not settings.is_plain:
            runner = ReadoutModel(model, inner.vocabulary, settings, setup.background)
        record = settings.as_record()
        entry.update(
            test_size=list(setup.test_size),
            window=_window(cfg),
            readout=record["readout"],
            logit_scale=record["logit_scale"],
            prob_threshold=record["prob_threshold"],
            background=setup.background,
            pamr=record["pamr"],
            prompt_ensemble=str(cfg.MODEL.PIXELCLIP.TEST.PROMPT_ENSEMBLE),
            vocabulary=setup.vocabulary,
            num_queries=len(getattr(runner, "queries", inner.vocabulary)),
        )
        if setup.prob_threshold > 0 and setup.background is None:
            logger.warning(
                "%s has no background class: the threshold %s is not applied",
                name,
                setup.prob_threshold,
            )
        entry["num_images_total"] = len(dicts)
        eval_name = name
        if max_images and max_images < len(dicts):
            eval_name = _register_subset(name, dicts[:max_images])
            entry["subset"] = True
        entry["num_images"] = min(len(dicts), max_images or len(dicts))
        try:
            dataset_cfg = _config_for(cfg, setup.test_size)
            loader = Trainer.build_test_loader(dataset_cfg, eval_name)
            folder = os.path.join(output_dir, "inference", name) if output_dir else None
            evaluator = Trainer.build_evaluator(dataset_cfg, eval_name, folder)
            logger.info(
                "Evaluating %s: %d of %d images, preset %s, test size %s, %s, readout %s, "
                "threshold %s, PAMR %s, classes from %s",
                name,
                entry["num_images"],
                len(dicts),
                preset.name,
                setup.test_size,
                entry["window"],
                settings.readout,
                entry["prob_threshold"],
                entry["pamr"] or "off",
                setup.vocabulary,
            )
            device = inner.device
            _peak_memory_reset(device)
            start = time.perf_counter()
            output = inference_on_dataset(runner, loader, evaluator)
            seconds = time.perf_counter() - start
        finally:
            if eval_name != name:
                _unregister(eval_name)
        entry["seconds"] = round(seconds, 3)
        entry["images_per_second"] = round(entry["num_images"] / max(seconds, 1e-9), 3)
        entry.update(_peak_memory(device))
        if comm.is_main_process():
            metrics = {k: float(v) for k, v in output.get("sem_seg", {}).items()}
            entry["metrics"] = metrics
            entry["mIoU"] = metrics.get("mIoU")
            entry["per_class_iou"] = {
                k[len("IoU-") :]: (v if math.isfinite(v) else None)
                for k, v in metrics.items()
                if k.startswith("IoU-")
            }
            logger.info("%s: mIoU %.2f", name, metrics.get("mIoU", math.nan))
    return results


def subset_miou(metrics: Mapping[str, float | None], class_names: Sequence[str]) -> float:
    """Mean IoU over a subset of classes (e.g. the "thing" or the "stuff" classes), in percent.

    Computed from SemSegEvaluator's per-class keys ``"IoU-<class>"``. A class without ground-truth
    pixels has IoU NaN there (None after a JSON round trip) and is left out, exactly as
    SemSegEvaluator leaves it out of its mIoU: over all classes this returns its "mIoU".

    Args:
        metrics: SemSegEvaluator's result dict (values in percent).
        class_names: class names as in the dataset's ``stuff_classes``.

    Returns:
        The mean of the defined IoUs of ``class_names``; NaN if none is defined.

    Raises:
        ValueError: empty ``class_names``.
        KeyError: a class has no "IoU-<class>" entry (the message lists the known classes).
    """
    if not class_names:
        raise ValueError("subset_miou: class_names is empty")
    values = []
    for name in class_names:
        key = f"IoU-{name}"
        if key not in metrics:
            known = [k[len("IoU-") :] for k in metrics if k.startswith("IoU-")]
            raise KeyError(f"no {key!r} in the metrics; classes with an IoU entry: {known}")
        value = metrics[key]
        if value is not None and math.isfinite(value):
            values.append(float(value))
    return sum(values) / len(values) if values else math.nan


def class_group_mious(
    metrics: Mapping[str, float | None], groups: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """:func:`subset_miou` for each named group, e.g. ``{"things": [...], "stuff": [...]}``."""
    return {group: subset_miou(metrics, names) for group, names in groups.items()}
