"""Spot sets' windows: gathered per batch from the slides' own arrays, equal to the concatenation, never copied whole."""

import numpy as np
import torch

from eca_bio.training.spots import WindowRows


def test_window_rows_gather_across_slides_as_the_concatenation_would():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8) for n in (3, 5, 2)]
    rows = WindowRows(parts)
    whole = np.concatenate(parts)
    assert len(rows) == 10 and rows.shape == (10, 4, 4, 3)
    pick = np.array([9, 0, 4, 3, 2, 8, 5])  # across all three slides, out of order
    np.testing.assert_array_equal(rows.take(pick), whole[pick])  # uint8 pixels: exact
    np.testing.assert_array_equal(rows.take(torch.arange(3, 8).numpy()), whole[3:8])
    assert rows.parts[1] is parts[1]  # the slide's array itself, not a copy
