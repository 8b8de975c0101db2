"""Tissue detection on a slide thumbnail: Otsu threshold on HSV saturation, morphology, minimum-area filter.

H&E tissue is stained (saturated); glass, background and most scanner borders are not. Very dark pixels
(pen marks, folds, out-of-slide black) are not tissue either.
"""

from __future__ import annotations


import numpy as np
from PIL import Image
from scipy import ndimage
from eca_bio.configs import TissueConfig


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1] (maximises between-class variance)."""
    hist, edges = np.histogram(values.ravel(), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(centres[best].mean())  # middle of the plateau when the classes are separated by a gap


def detect_tissue(thumbnail: Image.Image | np.ndarray, thumb_mpp: float, cfg: TissueConfig | None = None) -> np.ndarray:
    """Boolean tissue mask covering the whole thumbnail; ``thumb_mpp`` is microns per thumbnail pixel.

    Detection runs at ``cfg.work_mpp`` (the thumbnail is shrunk when finer), so the mask may be smaller than
    the thumbnail; it always spans the same slide area.
    """
    cfg = cfg or TissueConfig()
    img = thumbnail if isinstance(thumbnail, Image.Image) else Image.fromarray(np.asarray(thumbnail, dtype=np.uint8))
    if thumb_mpp < cfg.work_mpp:
        scale = thumb_mpp / cfg.work_mpp
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        thumb_mpp = thumb_mpp * img.size[0] / size[0]
        img = img.convert("RGB").resize(size, Image.Resampling.BOX)
    hsv = np.asarray(img.convert("RGB").convert("HSV"), dtype=np.float32) / 255.0
    sat, val = hsv[..., 1], hsv[..., 2]
    thr = max(otsu_threshold(sat), cfg.min_saturation)
    mask = (sat > thr) & (val > cfg.max_darkness)
    close_r = max(0, round(cfg.close_um / thumb_mpp))
    open_r = max(0, round(cfg.open_um / thumb_mpp))
    if close_r:
        mask = ndimage.binary_closing(mask, structure=_disk(close_r), border_value=0)
    if open_r:
        mask = ndimage.binary_opening(mask, structure=_disk(open_r))
    if cfg.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1)) * thumb_mpp ** 2
        keep = np.concatenate([[False], areas >= cfg.min_area_um2])
        mask = keep[labels]
    return mask


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius
