"""Reliability round 3, bio: the surface added last turn (feature files, external tests, manifests, images) holds."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from eca_bio.preprocess import run_preprocess
from tests.bio.conftest import make_legacy_st
from tests.bio.test_preprocess import CPU, cfg_for


def test_an_edited_slide_file_is_recomputed_not_blessed(tmp_path):
    make_legacy_st(tmp_path / "st" / "S1", section="S1", n=4)
    out = tmp_path / "out"
    cfg = cfg_for(st_dir=str(tmp_path / "st"))
    run_preprocess(cfg, out, CPU, progress=False)
    h5 = out / "slides" / "S1.h5"
    with h5py.File(h5, "r") as f:
        original = f["features"][3, 5]
    with h5py.File(h5, "r+") as f:  # same size, one value changed in place
        f["features"][3, 5] = original + 100.0
    run_preprocess(cfg, out, CPU, progress=False)
    with h5py.File(h5, "r") as f:
        assert f["features"][3, 5] == pytest.approx(original, abs=1e-5)
