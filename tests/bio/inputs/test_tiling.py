"""Tiling: spot-centred patches (marker test, real her2st crop), grid over tissue on the real .svs, check thumbnail."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from eca_bio.inputs.slides import open_slide
from eca_bio.inputs.st import find_sections, read_section
from eca_bio.inputs.tiling import draw_patches, grid_patches, patch_size_px, spot_patches
from eca_bio.inputs.tissue import detect_tissue

from tests.bio.conftest import tissue_image


def test_patch_size_in_level0_pixels():
    assert patch_size_px(112, 0.5) == 224
    assert patch_size_px(112, 0.688) == 163
    with pytest.raises(ValueError):
        patch_size_px(0, 0.5)


@pytest.mark.parametrize("size", [31, 32, 163])
def test_spot_patch_is_centred_on_a_marker(tmp_path, size):
    centres = np.array([[200.3, 150.6], [411.5, 90.49], [77.0, 333.0]])
    img = Image.new("RGB", (500, 400), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for cx, cy in centres:  # one red pixel at the integer pixel that contains each spot centre
        draw.point((int(np.floor(cx)), int(np.floor(cy))), fill=(255, 0, 0))
    img.save(tmp_path / "m.png")
    s = open_slide(tmp_path / "m.png", mpp=1.0)
    for (cx, cy), (x0, y0) in zip(centres, spot_patches(centres, size)):
        patch = np.asarray(s.read_region(int(x0), int(y0), size, size))
        ys, xs = np.nonzero((patch[..., 0] == 255) & (patch[..., 1] == 0))
        assert len(xs) == 1
        # pixel k covers [k, k+1) of the patch; the spot centre relative to the patch corner
        assert abs(x0 + xs[0] + 0.5 - cx) <= 0.5 + 1e-9 and abs(y0 + ys[0] + 0.5 - cy) <= 0.5 + 1e-9
        assert abs((x0 + size / 2) - cx) <= 0.5 and abs((y0 + size / 2) - cy) <= 0.5


def test_her2st_spot_patches_are_crops_around_pixel_xy(her2st):
    sec = find_sections(her2st, sections=["C3"])[0]
    adata = read_section(sec)
    reader = open_slide(adata.uns["st"]["image"], mpp=adata.uns["st"]["array_mpp"])
    size = patch_size_px(112, reader.mpp)
    coords = spot_patches(adata.obsm["spatial"], size)
    assert coords.dtype == np.int64 and coords.shape == (180, 2)
    np.testing.assert_allclose(coords + size / 2, adata.obsm["spatial"], atol=0.5)
    with Image.open(reader.path) as im:
        im.load()
        for i in (0, 57, 179):
            px, py = adata.obsm["spatial"][i]
            x0, y0 = int(np.floor(px - size / 2 + 0.5)), int(np.floor(py - size / 2 + 0.5))
            direct = np.asarray(im.crop((x0, y0, x0 + size, y0 + size)))
            np.testing.assert_array_equal(np.asarray(reader.read_region(*coords[i], size, size)), direct)
    reader.close()


def test_grid_keeps_boxes_with_tissue_only():
    mask = np.zeros((100, 100), dtype=bool)
    mask[20:60, 30:50] = True  # mask for a 1000 x 1000 slide: tissue at x 300-500, y 200-600
    coords = grid_patches(mask, (1000, 1000), 100, min_tissue=0.5)
    assert sorted(map(tuple, coords.tolist())) == [(x, y) for x in (300, 400) for y in (200, 300, 400, 500)]
    overlap = grid_patches(mask, (1000, 1000), 100, stride_px=50, min_tissue=0.5)
    assert len(overlap) > len(coords) and (overlap % 50 == 0).all()
    assert (overlap[:, 0] + 100 <= 1000).all() and (overlap[:, 1] + 100 <= 1000).all()


def test_svs_grid_tiles_over_tissue_only(cmu_svs, tmp_path):
    s = open_slide(cmu_svs)
    thumb = s.thumbnail(1024)
    mask = detect_tissue(thumb, s.mpp * s.dimensions[0] / thumb.size[0])
    size = patch_size_px(112, s.mpp)
    coords = grid_patches(mask, s.dimensions, size, min_tissue=0.25)
    assert 30 < len(coords) < 120
    assert (coords >= 0).all() and (coords[:, 0] + size <= 2220).all() and (coords[:, 1] + size <= 2967).all()
    # every kept patch has stained tissue in its real pixels; every grid box left out is mostly glass
    def stained(x, y):
        hsv = np.asarray(s.read_region(int(x), int(y), size, size, size=(56, 56)).convert("HSV"), dtype=float) / 255
        return (hsv[..., 1] > 0.15).mean()
    kept = {tuple(c) for c in coords.tolist()}
    assert min(stained(x, y) for x, y in kept) > 0.05
    dropped = [(x, y) for x in range(0, 2220 - size + 1, size) for y in range(0, 2967 - size + 1, size) if (x, y) not in kept]
    fractions = np.array([stained(x, y) for x, y in dropped])
    assert np.median(fractions) < 0.01 and (fractions < 0.05).mean() > 0.8  # left out: glass (some tissue edges)
    png = tmp_path / "thumb.png"
    out = draw_patches(thumb, s.dimensions, coords, size, png, mask)
    assert png.exists() and Image.open(png).size == thumb.size
    # patch outlines are drawn in blue on the thumbnail
    arr = np.asarray(out)
    assert ((arr[..., 2] > 200) & (arr[..., 0] < 60)).sum() > 100


def test_thumbnail_is_written_atomically(tmp_path):
    img = tissue_image(100, 100)
    draw_patches(img, (1000, 1000), np.array([[100, 100]]), 200, tmp_path / "t.png")
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]
