"""Analyses of a trained PixelCLIP: what its k label-free learned classes became.

* :mod:`.clusters`: nearest class names of each learned class, Hungarian / many-to-one matching
  of clusters to ground-truth classes with the unsupervised-segmentation mIoU and pixel accuracy,
  a 2-D PCA map, checked label maps (pure numpy);
* :mod:`.run`: the pass of a checkpoint over a labelled dataset and the output files;
* :mod:`.pictures` / :mod:`.report`: the PNGs and ``index.md``;
* :mod:`.cli`: ``tools/analyze_clusters.py``.
"""
