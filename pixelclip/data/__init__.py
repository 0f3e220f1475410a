"""Datasets and data mappers. Importing registers SA-1B and the benchmarks (lazily: nothing is
read until a dataset is requested)."""

from .benchmarks import register_all_benchmarks, register_sem_seg_dataset
from .mapper import SA1BDatasetMapper
from .sa1b import register_all_sa1b, register_image_folder, register_sa1b

register_all_sa1b()
register_all_benchmarks()

__all__ = [
    "SA1BDatasetMapper",
    "register_image_folder",
    "register_sa1b",
    "register_sem_seg_dataset",
]
