"""Spatial-transcriptomics sections: the layouts (:data:`LAYOUTS`), finding the sections of a folder, reading one.

Each layout's reader lives in its own module (:mod:`eca_bio.inputs.legacy_st`, :mod:`eca_bio.inputs.visium`, :mod:`eca_bio.inputs.hest`);
every one returns raw counts with ``obsm['spatial']`` = full-resolution pixel (x, y) of each spot centre,
``uns['spatial'][library_id]`` in the scanpy/squidpy layout, and ``uns['st']`` with the image path,
the microns per pixel implied by the array geometry and the spots that were excluded (and why).
Spots are never dropped silently: ``uns['st']['excluded']`` lists them by reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import anndata as ad

from eca_bio.inputs.hest import read_hest
from eca_bio.inputs.legacy_st import legacy_sections, legacy_st_mpp, read_legacy_st
from eca_bio.inputs.st_common import IMAGE_SUFFIXES, STError, exclude_outside_image
from eca_bio.inputs.visium import VISIUM_HD_BIN, read_10x_h5, read_visium, read_visium_hd, visium_count_file

__all__ = ["LAYOUTS", "IMAGE_SUFFIXES", "Section", "STError", "detect_layout", "exclude_outside_image", "find_sections", "legacy_st_mpp",
           "read_10x_h5", "read_hest", "read_legacy_st", "read_section", "read_visium", "read_visium_hd"]

STFormat = Literal["auto", "legacy_st", "visium", "visium_hd", "hest"]
Layout = Literal["legacy_st", "visium", "visium_hd", "hest"]


@dataclass
class Section:
    """One ST section found on disk."""

    section_id: str
    path: Path
    format: Layout


@dataclass(frozen=True)
class LayoutKind:
    """One spatial layout, the one place that knows it: how a folder of it is recognised, which sections it holds,
    how one section is read, what a user is told a folder of it holds, and whether its µm/px beats the image's."""

    detect: Callable[[Path], bool]
    sections: Callable[[Path], list[str]]
    read: Callable[[Section, Any, str], ad.AnnData]  # (section, image or None, Visium HD bin) -> raw counts AnnData
    message: str
    mpp_wins: bool = False  # HEST: its own estimate beats the TIFF's metadata, which can be 10x off


def _is_hest(folder: Path) -> bool:
    return (folder / "st").is_dir() and (folder / "wsis").is_dir() and any((folder / "st").glob("*.h5ad"))


def _is_visium(folder: Path) -> bool:
    return (folder / "spatial").is_dir() and visium_count_file(folder) is not None


# layout -> its kind, in detection order; adding a layout is one entry here (and its name in eca_bio.configs.LAYOUT_NAMES)
LAYOUTS: dict[str, LayoutKind] = {
    "hest": LayoutKind(_is_hest, lambda f: [p.stem for p in sorted((f / "st").glob("*.h5ad"))],
                       lambda s, image, _: read_hest(s.path, s.section_id, image=image),
                       "a HEST-1k folder (st/<id>.h5ad, wsis/<id>.tif, metadata/<id>.json)", mpp_wins=True),
    "visium_hd": LayoutKind(lambda f: (f / "binned_outputs").is_dir(), lambda f: [f.name],
                            lambda s, image, hd_bin: read_visium_hd(s.path, image=image, library_id=s.section_id, bin_name=hd_bin),
                            "a Visium HD Space Ranger folder (binned_outputs/<bin>/ + microscope image)"),
    "visium": LayoutKind(_is_visium, lambda f: [f.name],
                         lambda s, image, _: read_visium(s.path, image=image, library_id=s.section_id,
                                                         count_file=visium_count_file(s.path) or "filtered_feature_bc_matrix.h5"),
                         "a Visium Space Ranger folder (filtered_feature_bc_matrix.h5 + spatial/)"),
    "legacy_st": LayoutKind(lambda f: bool(legacy_sections(f)), legacy_sections,
                            lambda s, image, _: read_legacy_st(s.path, s.section_id, image=image),
                            "a legacy ST folder (<id>.tsv.gz + <id>_selection.tsv + an H&E image)"),
}


def detect_layout(path: str | os.PathLike) -> Layout | None:
    """The layout of a section folder (the first of :data:`LAYOUTS` that recognises it), else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    return next((name for name, kind in LAYOUTS.items() if kind.detect(path)), None)


def find_sections(st_dir: str | os.PathLike, fmt: STFormat = "auto", sections: list[str] | None = None) -> list[Section]:
    """Sections in ``st_dir``: the folder itself if it is one, else its sub-folders that are (sorted by name), and the
    Visium folders one level further down, in release folders as 10x's downloads are kept (EGN's ``1.0.0/<name>``,
    ``1.1.0/<name>``): their ids carry the release (``1.0.0_<name>``), since one name can come in several releases."""
    st_dir = Path(st_dir)
    if not st_dir.is_dir():
        raise STError(f"{st_dir}: no such directory")
    found: list[Section] = []
    own = detect_layout(st_dir)
    candidates = [st_dir] if own else sorted(p for p in st_dir.iterdir() if p.is_dir())
    for folder in candidates:
        layout = detect_layout(folder)
        if layout is None and not own:
            found.extend(_release_sections(folder, fmt))
        if layout is None or (fmt != "auto" and layout != fmt):
            continue
        found.extend(Section(sid, folder, layout) for sid in LAYOUTS[layout].sections(folder))
    if not found:
        want = LAYOUTS[fmt].message if fmt in LAYOUTS else ", ".join(k.message for k in LAYOUTS.values())
        raise STError(f"{st_dir}: not {want}, nor a folder of such folders")
    ids = [s.section_id for s in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise STError(f"{st_dir}: section id(s) {dupes} occur more than once")
    if sections is not None:
        missing = sorted(set(sections) - set(ids))
        if missing:
            raise STError(f"{st_dir}: section(s) {missing} not found; available: {ids}")
        found = [s for s in found if s.section_id in set(sections)]
    return found


def _release_sections(folder: Path, fmt: STFormat) -> list[Section]:
    """Visium (HD) section folders inside ``folder`` (a release folder such as 10x's ``1.2.0``), ids ``<release>_<name>``."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        layout = detect_layout(sub)
        if layout in ("visium", "visium_hd") and fmt in ("auto", layout):
            out.append(Section(f"{folder.name}_{sub.name}", sub, layout))
    return out


def read_section(section: Section, image: str | os.PathLike | None = None, hd_bin: str = VISIUM_HD_BIN) -> ad.AnnData:
    """Load a section found by ``find_sections``."""
    return LAYOUTS[section.format].read(section, image, hd_bin)
