"""Spot windows stored once at preprocess (end-to-end models): the file, its rows, resume, a damaged file redone."""

import numpy as np
import pytest

from eca_bio.features.feature_set import FeatureSet
from eca_bio.features.preprocess import run_preprocess
from eca_bio.features.window_store import WindowFileError, read_windows
from eca_bio.inputs.slides import open_slide
from tests.bio.conftest import make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for


def test_windows_are_the_spot_patches_at_window_px_and_resume(tmp_path):
    st = tmp_path / "st"
    make_legacy_st(st / "S1", section="S1", seed=1)
    make_legacy_st(st / "S2", section="S2", seed=2)
    cfg = cfg_for(st_dir=str(st), token_grid=1, window_px=24)
    manifest = run_preprocess(cfg, tmp_path / "pre", CPU, progress=False)
    fs = FeatureSet(tmp_path / "pre")
    entry = manifest["slides"][0]
    windows = fs.windows(entry)
    slide = fs.load(entry)
    assert windows.shape == (slide.n_spots, 24, 24, 3) and windows.dtype == np.uint8
    with open_slide(entry["image"], mpp=entry["mpp"]) as reader:  # row i is the spot patch of the h5's row i
        x, y = slide.coords[3]
        want = np.asarray(reader.read_region(int(x), int(y), entry["patch_size_px"], entry["patch_size_px"], size=(24, 24)))
    np.testing.assert_array_equal(windows[3], want)  # uint8 pixels read by the same reader: exact
    path = tmp_path / "pre" / entry["windows"]
    stamp = path.stat().st_mtime_ns
    run_preprocess(cfg, tmp_path / "pre", CPU, progress=False)
    assert path.stat().st_mtime_ns == stamp  # up to date: not cut again
    path.write_bytes(path.read_bytes()[:500])  # a damaged window file is never served as up to date
    with pytest.raises(WindowFileError, match="not a readable window file"):
        read_windows(path)
    run_preprocess(cfg, tmp_path / "pre", CPU, progress=False)
    assert read_windows(path, slide.n_spots).shape == windows.shape
    without = run_preprocess(cfg_for(st_dir=str(st), token_grid=1), tmp_path / "pre2", CPU, progress=False)
    assert "windows" not in without["slides"][0] and not list((tmp_path / "pre2" / "slides").glob("*.windows.h5"))
