"""Where patches go: spot-centred boxes for ST sections, a grid over detected tissue for WSIs, and a check thumbnail.

Coordinates are level-0 pixels of the patch TOP-LEFT corner (CLAM/TRIDENT convention); a patch of
``size_px`` level-0 pixels cut at ``(x, y)`` covers ``[x, x + size_px) x [y, y + size_px)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def patch_size_px(patch_um: float, mpp: float) -> int:
    """Level-0 pixel side of a ``patch_um`` micron patch on a slide at ``mpp`` microns per pixel."""
    if patch_um <= 0 or mpp <= 0:
        raise ValueError(f"patch_um ({patch_um}) and mpp ({mpp}) must be positive")
    return max(1, int(round(patch_um / mpp)))


def spot_patches(centres: np.ndarray, size_px: int) -> np.ndarray:
    """Top-left corners (N, 2) int64 of ``size_px`` boxes centred on the spot centres (N, 2) (x, y).

    The box centre ``x0 + size_px / 2`` is within half a pixel of the spot centre.
    """
    centres = np.asarray(centres, dtype=np.float64)
    return np.floor(centres - size_px / 2.0 + 0.5).astype(np.int64)


def grid_patches(mask: np.ndarray, dimensions: tuple[int, int], size_px: int, stride_px: int | None = None,
                 min_tissue: float = 0.25) -> np.ndarray:
    """Top-left corners (N, 2) int64 of a regular grid over the slide, keeping boxes with enough tissue.

    ``mask`` is a boolean tissue mask of a thumbnail of the whole slide (any size); a box is kept when the
    fraction of its thumbnail pixels that are tissue is at least ``min_tissue``. Boxes lie inside the slide.
    """
    W, H = dimensions
    stride = int(stride_px or size_px)
    mh, mw = mask.shape
    sx, sy = mw / W, mh / H
    integral = np.pad(mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    xs = np.arange(0, max(W - size_px, 0) + 1, stride)
    ys = np.arange(0, max(H - size_px, 0) + 1, stride)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    x0 = np.clip(np.floor(gx * sx).astype(int), 0, mw)
    x1 = np.clip(np.ceil((gx + size_px) * sx).astype(int), 0, mw)
    y0 = np.clip(np.floor(gy * sy).astype(int), 0, mh)
    y1 = np.clip(np.ceil((gy + size_px) * sy).astype(int), 0, mh)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    tissue = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    keep = tissue / area >= min_tissue
    return np.stack([gx[keep], gy[keep]], axis=1).astype(np.int64)


def draw_patches(thumbnail: Image.Image, dimensions: tuple[int, int], coords: np.ndarray, size_px: int,
                 path: str | os.PathLike | None = None, mask: np.ndarray | None = None) -> Image.Image:
    """The thumbnail with every patch outlined (and the tissue mask tinted); saved as PNG when ``path`` is given."""
    img = thumbnail.convert("RGB").copy()
    if mask is not None:
        tint = Image.new("RGB", img.size, (0, 160, 0))
        m = Image.fromarray((np.asarray(mask) * 60).astype(np.uint8)).resize(img.size, Image.Resampling.NEAREST)
        img.paste(tint, mask=m)
    scale = img.size[0] / dimensions[0]
    draw = ImageDraw.Draw(img)
    width = max(1, int(math.ceil(min(img.size) / 800)))
    for x, y in np.asarray(coords):
        box = [x * scale, y * scale, (x + size_px) * scale - 1, (y + size_px) * scale - 1]
        draw.rectangle(box, outline=(20, 60, 255), width=width)
    if path is not None:
        from eca_core.io import atomic_path

        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
    return img


def thumbnail_path(out_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the patch-check thumbnail of ``slide_id`` goes."""
    return Path(out_dir) / f"{slide_id}.thumb.png"
