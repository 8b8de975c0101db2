"""Tissue detection: Otsu on saturation, morphology, minimum area; on synthetic slides and the real .svs."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from eca_bio.inputs.slides import open_slide
from eca_bio.inputs.tissue import TissueConfig, detect_tissue, otsu_threshold

from tests.bio.conftest import tissue_image


def test_otsu_splits_a_bimodal_sample():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.6, 0.05, 3000)]).clip(0, 1)
    thr = otsu_threshold(values)
    assert 0.25 < thr < 0.45 and (values < thr).sum() == 5000


def test_tissue_found_speck_and_background_ignored():
    img = tissue_image(400, 300)
    ImageDraw.Draw(img).ellipse([5, 5, 9, 9], fill=(150, 40, 120))  # a 5 px stained speck in a corner
    ImageDraw.Draw(img).rectangle([380, 280, 399, 299], fill=(10, 10, 10))  # black scanner border
    mask = detect_tissue(img, thumb_mpp=10.0, cfg=TissueConfig(min_area_um2=20_000, close_um=20, open_um=10))
    assert mask.shape == (300, 400)
    assert mask[150, 200] and mask[150, 100]                   # inside the ellipse
    assert not mask[7, 7]                                      # speck below the minimum area
    assert not mask[290, 390] and not mask[5, 200]             # dark border, glass
    ellipse = Image.new("L", (400, 300), 0)
    ImageDraw.Draw(ellipse).ellipse([40, 30, 360, 270], fill=1)
    truth = np.asarray(ellipse, dtype=bool)
    assert (mask == truth).mean() > 0.97


def test_blank_slide_has_no_tissue():
    blank = Image.new("RGB", (200, 200), (240, 240, 242))
    assert not detect_tissue(blank, thumb_mpp=8.0).any()


def test_real_svs_tissue_mask(cmu_svs):
    s = open_slide(cmu_svs)
    thumb = s.thumbnail(1024)
    mask = detect_tissue(thumb, s.mpp * s.dimensions[0] / thumb.size[0])
    # the mask is computed at ~4 um/px and spans the whole slide
    assert abs(mask.shape[1] / mask.shape[0] - thumb.size[0] / thumb.size[1]) < 0.02
    assert 0.2 < mask.mean() < 0.6
    # glass in the top-left and top-right corners, tissue in the middle of the section
    h, w = mask.shape
    assert not mask[: h // 10, : w // 10].any() and not mask[: h // 10, -w // 10:].any()
    assert mask[int(h * 0.6), int(w * 0.5)]
