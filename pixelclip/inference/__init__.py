"""Inference: run-time vocabularies and the ``Predictor`` API."""

from .predictor import Predictor, parse_vocabulary

__all__ = ["Predictor", "parse_vocabulary"]
