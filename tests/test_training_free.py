"""The training-free readout: names as queries, max over names, background by threshold; checked
on hand-computed cases."""

import math

import pytest
import torch

from pixelclip.inference.training_free import (
    class_probabilities,
    names_as_queries,
    predict_with_background,
)


def test_names_become_queries_of_their_class():
    queries, owner = names_as_queries(["background, sky, wall", "person, people", "cat"])
    assert queries == ["background", "sky", "wall", "person", "people", "cat"]
    assert owner.tolist() == [0, 0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="class 1"):
        names_as_queries(["a", " , "])


def test_background_threshold_by_hand():
    # Two pixels, three queries: background (class 0) and two names of class 1.
    cosines = torch.tensor([[0.20, 0.30], [0.25, 0.10], [0.21, 0.12]]).view(3, 1, 2)
    owner = torch.tensor([0, 1, 1])
    probs = class_probabilities(cosines, owner, logit_scale=40.0)
    # Pixel 0: exp(40 * c) for c = 0.20, 0.25, 0.21 -> e^8, e^10, e^8.4.
    z = math.exp(8) + math.exp(10) + math.exp(8.4)
    assert probs[0, 0, 0].item() == pytest.approx(math.exp(8) / z, rel=1e-5)
    assert probs[1, 0, 0].item() == pytest.approx(math.exp(10) / z, rel=1e-5)  # the best name
    # Pixel 1: e^12, e^4, e^4.8: background wins outright.
    z1 = math.exp(12) + math.exp(4) + math.exp(4.8)
    assert probs[0, 0, 1].item() == pytest.approx(math.exp(12) / z1, rel=1e-5)
    assert predict_with_background(probs).view(-1).tolist() == [1, 0]
    # Class 1's probability at pixel 0 is e^10 / z = 0.748: a threshold of 0.8 sends it to
    # the background, 0.7 does not.
    assert predict_with_background(probs, 0.8).view(-1).tolist() == [0, 0]
    assert predict_with_background(probs, 0.7).view(-1).tolist() == [1, 0]


def test_max_over_names_differs_from_averaging_embeddings():
    """A class scored by its best name is not the class of the averaged embedding."""
    cosines = torch.tensor([[0.30], [0.05], [0.20]]).view(3, 1, 1)
    owner = torch.tensor([0, 0, 1])  # class 0 = {name a: 0.30, name b: 0.05}, class 1: 0.20
    probs = class_probabilities(cosines, owner)
    assert predict_with_background(probs).item() == 0  # best name 0.30 > 0.20
    averaged = torch.tensor([(0.30 + 0.05) / 2, 0.20])
    assert int(averaged.argmax()) == 1  # the paper protocol's averaging would pick class 1


def test_bad_shapes_and_missing_classes_are_errors():
    with pytest.raises(ValueError, match="expected cosines"):
        class_probabilities(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="every class"):
        class_probabilities(torch.zeros(2, 1, 1), torch.tensor([0, 2]))
