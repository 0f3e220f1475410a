"""ToyWorld: a synthetic world in which PixelCLIP trains and is evaluated on a CPU in minutes.

* :mod:`.world`: the seeded generator (images, captions, class-agnostic masks, label maps) and
  the on-disk writer;
* :mod:`.datasets`: a written world in detectron2's catalogs (``toyworld_train``,
  ``toyworld_dev_sem_seg``, ``toyworld_test_sem_seg``; registered lazily when :mod:`pixelclip` is
  imported);
* :mod:`.pretrain`: contrastive pretraining of the small open_clip model "toy-clip" on the
  captions (``tools/pretrain_toy_clip.py``; the result ships in ``assets/``);
* :mod:`.quickstart` and :mod:`.report`: the quickstart pipeline of ``make demo``
  (``tools/quickstart.py``): baseline, PixelCLIP training, evaluation, tables and a picture grid.

Importing this package registers the datasets and nothing else; the pretraining and quickstart
modules are imported on demand.
"""

from .datasets import (
    TOYWORLD_DATASETS,
    default_toyworld_root,
    load_toyworld_sem_seg_dicts,
    load_toyworld_train_dicts,
    register_all_toyworld,
    register_toyworld,
)
from .world import (
    TOYWORLD_CLASSES,
    TOYWORLD_STUFF,
    TOYWORLD_THINGS,
    ToyWorldBatch,
    caption_min_pixels,
    generate_toyworld,
    write_toyworld,
)

register_all_toyworld()

__all__ = [
    "TOYWORLD_CLASSES",
    "TOYWORLD_DATASETS",
    "TOYWORLD_STUFF",
    "TOYWORLD_THINGS",
    "ToyWorldBatch",
    "caption_min_pixels",
    "default_toyworld_root",
    "generate_toyworld",
    "load_toyworld_sem_seg_dicts",
    "load_toyworld_train_dicts",
    "register_all_toyworld",
    "register_toyworld",
    "write_toyworld",
]
