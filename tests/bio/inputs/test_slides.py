"""Slide readers: OpenSlide (real .svs, a pyramidal TIFF) and plain images, mpp rules, errors naming the file."""

from __future__ import annotations

import pickle

import numpy as np
import openslide
import pytest
import tifffile

from eca_bio.inputs.slides import ImageReader, OpenSlideReader, SlideError, open_slide

from tests.bio.conftest import tissue_image


def test_svs_reader_metadata_and_regions(cmu_svs):
    s = open_slide(cmu_svs)
    assert isinstance(s, OpenSlideReader)
    assert s.dimensions == (2220, 2967) and s.mpp == pytest.approx(0.499) and s.slide_id == "cmu_small_region"
    direct = openslide.OpenSlide(str(cmu_svs)).read_region((300, 400), 0, (64, 48)).convert("RGB")
    assert np.array_equal(np.asarray(s.read_region(300, 400, 64, 48)), np.asarray(direct))
    # 200 level-0 px at 0.499 um/px resampled to 0.998 um/px -> 100 px
    assert s.read_region(300, 400, 200, 200, target_mpp=0.998).size == (100, 100)
    assert s.read_region(0, 0, 64, 64, size=(32, 32)).size == (32, 32)
    thumb = s.thumbnail(256)
    assert max(thumb.size) == 256 and thumb.mode == "RGB"


def test_region_outside_the_slide_is_white(cmu_svs):
    s = open_slide(cmu_svs)
    arr = np.asarray(s.read_region(2200, 2950, 40, 40))
    assert (arr[25:, :] == 255).all() and (arr[:, 25:] == 255).all()


def test_pyramidal_tiff_uses_the_best_level(tmp_path):
    base = np.asarray(tissue_image(1536, 1024))
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as t:
        t.write(base, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
        t.write(base[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
        t.write(base[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1)
    s = open_slide(path)
    assert isinstance(s, OpenSlideReader) and s.mpp == pytest.approx(0.25)
    assert s.best_level(1.0) == 0 and s.best_level(2.0) == 1 and s.best_level(3.0) == 1 and s.best_level(8.0) == 2
    # 1.0 um/px from a 0.25 um/px slide: level 2 (downsample 4) read directly, no resize
    region = s.read_region(512, 256, 256, 256, target_mpp=1.0)
    assert region.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(region), base[::4, ::4][64:128, 128:192])


def test_plain_jpeg_needs_mpp(tmp_path):
    path = tmp_path / "he.jpg"
    tissue_image(300, 200).save(path)
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert str(path) in str(err.value) and "--mpp" in str(err.value)
    s = open_slide(path, mpp=0.7)
    assert isinstance(s, ImageReader) and s.mpp == 0.7 and s.dimensions == (300, 200)


def test_plain_image_regions_match_a_direct_crop_and_pad_white(tmp_path):
    path = tmp_path / "he.png"
    img = tissue_image(300, 200)
    img.save(path)
    s = open_slide(path, mpp=0.5)
    np.testing.assert_array_equal(np.asarray(s.read_region(10, 20, 50, 40)), np.asarray(img)[20:60, 10:60])
    padded = np.asarray(s.read_region(-10, -5, 30, 30))
    assert (padded[:5] == 255).all() and (padded[:, :10] == 255).all()
    np.testing.assert_array_equal(padded[5:, 10:], np.asarray(img)[:25, :20])


def test_tiff_resolution_tags_give_mpp(tmp_path):
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.asarray(tissue_image(120, 80)), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    s = open_slide(path)
    assert s.mpp == pytest.approx(0.5) and s.dimensions == (120, 80)
    assert s.read_region(0, 0, 40, 40, target_mpp=1.0).size == (20, 20)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.jpg"
    tissue_image(400, 400).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    s = open_slide(path, mpp=0.5)  # the header is intact
    with pytest.raises(SlideError) as err:
        s.thumbnail(128)
    assert str(path) in str(err.value) and "truncated" in str(err.value)
    with pytest.raises(SlideError, match="cut.jpg"):
        s.read_region(0, 0, 32, 32)


@pytest.mark.parametrize("name", ["garbage.svs", "garbage.jpg", "garbage.tif"])
def test_unreadable_file_is_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(SlideError) as err:
        open_slide(path, mpp=0.5)
    assert str(path.name) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")


def test_readers_pickle_and_reopen(cmu_svs, tmp_path):
    s = open_slide(cmu_svs)
    before = np.asarray(s.read_region(100, 100, 32, 32))
    clone = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(np.asarray(clone.read_region(100, 100, 32, 32)), before)
    path = tmp_path / "he.png"
    tissue_image(64, 64).save(path)
    p = pickle.loads(pickle.dumps(open_slide(path, mpp=1.0)))
    assert p.read_region(0, 0, 8, 8).size == (8, 8)
