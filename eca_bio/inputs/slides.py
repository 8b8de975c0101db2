"""One reader interface over whole-slide images (OpenSlide) and plain images (Pillow / tifffile).

``open_slide(path, mpp=None)`` returns a ``SlideReader`` with level-0 ``dimensions``, microns per
pixel (an explicit ``mpp`` first, then the slide's metadata, then a fallback such as an ST array's
geometry, else a ``SlideError``; implausible values are refused) and
``read_region(x, y, w, h, target_mpp=None, size=None)`` which reads a level-0 box from the best
pyramid level and resizes it. Readers are picklable: the file is (re)opened lazily in each process,
so DataLoader workers each hold their own OpenSlide handle / decoded image.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from eca_core.errors import InputError
from eca_bio.configs import DEFAULT_MAX_MEGAPIXELS

# Pillow's own decompression-bomb guard (179 megapixels) would refuse full-resolution H&E JPEGs; plain images
# are held to max_megapixels instead (checked from the header, before anything is decoded).
Image.MAX_IMAGE_PIXELS = None

PLAIN_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf"}
BACKGROUND = (255, 255, 255)
_DECODED_CACHE_SIZE = 1  # decoded plain images kept per process (each her2st JPEG is ~270 MB decoded)
_decoded: "OrderedDict[str, Image.Image]" = OrderedDict()
MPP_RANGE = (0.05, 50.0)  # plausible microns per pixel of an H&E image (40x scanners ~0.25, thumbnails ~10)
log = logging.getLogger(__name__)


class SlideError(InputError):
    """A slide cannot be opened, decoded, or has no usable microns-per-pixel."""


class SlideReader:
    """Common interface; subclasses implement ``_open``, ``_read_level0`` / ``read_region`` and ``thumbnail``."""

    kind = "base"

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, fallback_mpp: float | None = None,
                 allow_unusual_mpp: bool = False, max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS) -> None:
        self.path = Path(path).resolve()
        self.slide_id = slide_id_from_path(self.path)
        self._handle: Any = None
        self.allow_unusual_mpp = allow_unusual_mpp
        self.max_megapixels = max_megapixels
        self.dimensions, self.metadata_mpp = self._probe()
        self.mpp, self.mpp_source = self._resolve_mpp(mpp, fallback_mpp)

    def _resolve_mpp(self, mpp: float | None, fallback: float | None) -> tuple[float, str]:
        """Explicit ``mpp`` wins (with a warning when the metadata says otherwise), then metadata, then ``fallback``."""
        if mpp is not None:
            value, source = mpp, "--mpp"
            if self.metadata_mpp is not None and not math.isclose(float(mpp), self.metadata_mpp, rel_tol=1e-3):
                log.warning("warning: %s: using the given mpp %.4g um/px; the slide's metadata says %.4g um/px",
                            self.path, float(mpp), self.metadata_mpp)
        elif self.metadata_mpp is not None:
            value, source = self.metadata_mpp, "slide metadata"
        elif fallback is not None:
            value, source = fallback, "fallback"
        else:
            raise SlideError(
                f"{self.path}: the slide's metadata has no microns-per-pixel; pass --mpp (preprocess param 'mpp')"
            )
        return self._checked_mpp(value, source), source

    def _checked_mpp(self, value: Any, source: str) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SlideError(f"{self.path}: invalid microns-per-pixel {value!r} ({source})") from None
        if not math.isfinite(value) or value <= 0:
            raise SlideError(f"{self.path}: invalid microns-per-pixel {value!r} ({source})")
        if not self.allow_unusual_mpp and not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
            raise SlideError(f"{self.path}: {value:g} um/px ({source}) is outside the plausible range "
                             f"{MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} um/px for H&E slides; set allow_unusual_mpp to use it anyway")
        return value

    def set_mpp(self, mpp: float, source: str = "set") -> None:
        """Override the resolution (e.g. one derived from a spatial-transcriptomics array)."""
        self.mpp, self.mpp_source = self._checked_mpp(mpp, source), source

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _probe(self) -> tuple[tuple[int, int], float | None]:
        raise NotImplementedError

    def read_region(self, x: int, y: int, w: int, h: int, target_mpp: float | None = None,
                    size: tuple[int, int] | None = None) -> Image.Image:
        """RGB image of the level-0 box (x, y, w, h), resampled to ``target_mpp`` or to ``size`` (w, h).

        Pixels outside the slide are white.
        """
        if size is None:
            if target_mpp is None:
                size = (int(w), int(h))
            else:
                scale = self.mpp / float(target_mpp)
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
        try:
            return self._read(int(x), int(y), int(w), int(h), (int(size[0]), int(size[1])))
        except SlideError:
            raise
        except Exception as exc:  # decoder/library errors: name the file
            raise SlideError(f"{self.path}: cannot read region x={x} y={y} w={w} h={h}: {exc}") from exc

    def _read(self, x: int, y: int, w: int, h: int, size: tuple[int, int]) -> Image.Image:
        raise NotImplementedError

    def thumbnail(self, max_size: int) -> Image.Image:
        """RGB overview whose longer side is at most ``max_size`` pixels (decodes the whole slide once)."""
        raise NotImplementedError

    def close(self) -> None:
        self._handle = None

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, dimensions={self.dimensions}, mpp={self.mpp:.4f})"


class OpenSlideReader(SlideReader):
    """Pyramidal WSIs through OpenSlide (svs, ndpi, mrxs, scn, tiled tiff, ...)."""

    kind = "openslide"

    def _slide(self):
        if self._handle is None:
            import openslide

            try:
                self._handle = openslide.OpenSlide(str(self.path))
            except Exception as exc:
                raise SlideError(f"{self.path}: OpenSlide cannot open it: {exc}") from exc
        return self._handle

    def _probe(self) -> tuple[tuple[int, int], float | None]:
        slide = self._slide()
        props = slide.properties
        mpp = _float_or_none(props.get("openslide.mpp-x"))
        if mpp is None:
            mpp = _mpp_from_resolution(props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit"))
        return tuple(int(v) for v in slide.dimensions), mpp

    def best_level(self, downsample: float) -> int:
        """The highest-resolution pyramid level whose downsample does not exceed ``downsample``."""
        slide = self._slide()
        best = 0
        for level, ds in enumerate(slide.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = level
        return best

    def _read(self, x: int, y: int, w: int, h: int, size: tuple[int, int]) -> Image.Image:
        slide = self._slide()
        level = self.best_level(min(w / size[0], h / size[1]))
        ds = slide.level_downsamples[level]
        lw, lh = max(1, math.ceil(w / ds)), max(1, math.ceil(h / ds))
        region = slide.read_region((x, y), level, (lw, lh))
        rgb = Image.new("RGB", region.size, BACKGROUND)
        rgb.paste(region, mask=region.getchannel("A"))
        return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BILINEAR)

    def thumbnail(self, max_size: int) -> Image.Image:
        slide = self._slide()
        try:
            level = slide.get_best_level_for_downsample(max(slide.dimensions) / max_size)
            w, h = slide.level_dimensions[level]
            region = slide.read_region((0, 0), level, (w, h))
        except Exception as exc:
            raise SlideError(f"{self.path}: cannot read the slide's pixels: {exc}") from exc
        rgb = Image.new("RGB", region.size, BACKGROUND)
        rgb.paste(region, mask=region.getchannel("A"))
        rgb.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
        return rgb

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None


class ImageReader(SlideReader):
    """Plain (non-pyramidal) images: JPEG/PNG via Pillow, TIFF via tifffile. Decoded once per process."""

    kind = "image"

    def _is_tiff(self) -> bool:
        return self.path.suffix.lower() in TIFF_SUFFIXES

    def _probe(self) -> tuple[tuple[int, int], float | None]:
        if not self.path.is_file():
            raise SlideError(f"{self.path}: no such file")
        if self._is_tiff():
            import tifffile

            try:
                with tifffile.TiffFile(self.path) as tif:
                    page = tif.pages[0]
                    shape = page.shape
                    axes = page.axes
                    tags = page.tags
                    xres = tags.get("XResolution")
                    unit = tags.get("ResolutionUnit")
                    mpp = _mpp_from_resolution(xres.value if xres else None, unit.value if unit else None)
            except Exception as exc:
                raise SlideError(f"{self.path}: not a readable TIFF: {exc}") from exc
            if "X" not in axes or "Y" not in axes:
                raise SlideError(f"{self.path}: TIFF page has axes {axes!r}, expected an RGB/grey image")
            return (int(shape[axes.index("X")]), int(shape[axes.index("Y")])), mpp
        try:
            with Image.open(self.path) as im:
                size = im.size
        except Exception as exc:
            raise SlideError(f"{self.path}: not a readable image: {exc}") from exc
        # JPEG/PNG dpi fields are screen resolutions (72/96 dpi), never microscope resolutions.
        return (int(size[0]), int(size[1])), None

    def _check_size(self, size: tuple[int, int]) -> None:
        """Refuse to decode more than ``max_megapixels`` (a 13 MB PNG can claim 3 gigapixels: 9 GB of RGB)."""
        check_decode_size(self.path, size, self.max_megapixels)

    def image(self) -> Image.Image:
        """The decoded level-0 RGB image, cached per process (Pillow crops it without copying the whole image)."""
        self._check_size(self.dimensions)
        key = str(self.path)
        if key in _decoded:
            _decoded.move_to_end(key)
            return _decoded[key]
        while len(_decoded) >= _DECODED_CACHE_SIZE:
            _decoded.popitem(last=False)
        try:
            if self._is_tiff():
                import tifffile

                img = Image.fromarray(_to_rgb_array(tifffile.imread(self.path, key=0)))
            else:
                with Image.open(self.path) as im:
                    im.load()
                    img = im if im.mode == "RGB" else im.convert("RGB")
        except Exception as exc:
            raise SlideError(f"{self.path}: cannot decode image (unreadable or truncated?): {exc}") from exc
        if img.size != tuple(self.dimensions):
            raise SlideError(f"{self.path}: decoded size {img.size} != header size {self.dimensions}")
        _decoded[key] = img
        return img

    def _read(self, x: int, y: int, w: int, h: int, size: tuple[int, int]) -> Image.Image:
        img = self.image()
        W, H = img.size
        if x >= 0 and y >= 0 and x + w <= W and y + h <= H:
            crop = img.crop((x, y, x + w, y + h))
        else:  # partly outside the slide: white background
            crop = Image.new("RGB", (w, h), BACKGROUND)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
            if x1 > x0 and y1 > y0:
                crop.paste(img.crop((x0, y0, x1, y1)), (x0 - x, y0 - y))
        return crop if crop.size == size else crop.resize(size, Image.Resampling.BILINEAR)

    def thumbnail(self, max_size: int) -> Image.Image:
        try:
            if self._is_tiff():
                img = self.image().copy()
            else:
                with Image.open(self.path) as im:
                    im.draft("RGB", (max_size, max_size))  # JPEG: decode at 1/2..1/8 scale, much faster
                    self._check_size(im.size)  # what will be decoded (PNG: the full image)
                    img = im.convert("RGB")
                    img.load()
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"{self.path}: cannot decode image (unreadable or truncated?): {exc}") from exc
        img.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
        return img

    def close(self) -> None:
        _decoded.pop(str(self.path), None)


def check_decode_size(path: str | os.PathLike, size: tuple[int, int], max_megapixels: float | None) -> None:
    """The rule for decoding a whole plain image into memory: at most ``max_megapixels`` (None: no limit)."""
    mp = size[0] * size[1] / 1e6
    if max_megapixels is not None and mp > max_megapixels:
        raise SlideError(f"{path}: {size[0]} x {size[1]} px = {mp:.0f} megapixels would be decoded whole "
                         f"(~{3 * mp / 1e3:.1f} GB), over the limit of {max_megapixels:g} for plain images (a decompression "
                         f"bomb?); convert it to a pyramidal TIFF, which is read lazily, or raise max_image_megapixels")


def open_slide(path: str | os.PathLike, mpp: float | None = None, fallback_mpp: float | None = None,
               allow_unusual_mpp: bool = False, max_megapixels: float | None = DEFAULT_MAX_MEGAPIXELS) -> SlideReader:
    """Open ``path`` with OpenSlide when it is a format OpenSlide knows, else as a plain image.

    Microns per pixel: an explicit ``mpp`` wins (a warning shows both when the metadata differs), then
    the file's metadata, then ``fallback_mpp`` (e.g. from an ST array); values outside
    ``MPP_RANGE`` are refused unless ``allow_unusual_mpp``.
    """
    kw = {"fallback_mpp": fallback_mpp, "allow_unusual_mpp": allow_unusual_mpp, "max_megapixels": max_megapixels}
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise SlideError(f"{path}: is a directory, not a slide")
    if path.suffix.lower() not in PLAIN_SUFFIXES:
        import openslide

        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except Exception:
            fmt = None
        if fmt is not None:
            return OpenSlideReader(path, mpp, **kw)
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise SlideError(f"{path}: neither OpenSlide nor Pillow/tifffile can read this file type")
    return ImageReader(path, mpp, **kw)


def slide_id_from_path(path: str | os.PathLike) -> str:
    """File name without its (possibly double) extension."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _mpp_from_resolution(xres: Any, unit: Any) -> float | None:
    """Microns per pixel from TIFF XResolution/ResolutionUnit; None for screen dpi or no unit."""
    if xres is None or unit is None:
        return None
    if isinstance(xres, tuple) and len(xres) == 2:
        xres = xres[0] / xres[1] if xres[1] else None
    res = _float_or_none(xres)
    if res is None:
        return None
    unit_name = str(getattr(unit, "name", unit)).lower()
    if unit_name in ("3", "centimeter", "centimetre"):
        mpp = 1e4 / res
    elif unit_name in ("2", "inch"):
        mpp = 25400.0 / res
    else:
        return None
    # 72/96/300-dpi style values are image-editor defaults, not microscope resolutions.
    return mpp if 0.05 <= mpp <= 20 else None


def _to_rgb_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, 2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image array shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        hi = float(arr.max()) or 1.0
        arr = (arr.astype(np.float32) * (255.0 / (65535.0 if hi > 255 else 255.0))).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


HIRES_PX = 2000
LOWRES_PX = 600


def slide_images(image: str | Path, mpp: float | None, hires_px: int = HIRES_PX, lowres_px: int = LOWRES_PX,
                 max_megapixels: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Hires/lowres RGB thumbnails of a slide and their scale factors relative to level-0 pixels."""
    with open_slide(image, mpp=mpp, max_megapixels=max_megapixels or DEFAULT_MAX_MEGAPIXELS) as reader:
        width = reader.dimensions[0]
        images, scales = {}, {}
        for name, size in (("hires", hires_px), ("lowres", lowres_px)):
            thumb = np.asarray(reader.thumbnail(size).convert("RGB"))
            images[name] = thumb
            scales[f"tissue_{name}_scalef"] = thumb.shape[1] / float(width)
    return images, scales


def thumbnail_hash(image: Image.Image) -> str:
    """A 256-bit difference hash (16 x 16 dHash) of a slide's overview, as 64 hex digits. Measured: the same image
    stored again (half size, JPEG quality 70) is 0-14 bits apart; her2st's serial sections of one tumour 102-126; the
    demo's smooth synthetic slides 34 or more."""
    g = np.asarray(image.convert("L").resize((17, 16), Image.Resampling.LANCZOS), dtype=np.float32)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):064x}"


def hash_distance(a: str, b: str) -> int:
    """Differing bits of two :func:`thumbnail_hash` values."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")

