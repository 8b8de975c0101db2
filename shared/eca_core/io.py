"""Atomic file and directory writes (a crash or Ctrl-C leaves either the old file or the new one, never half of
one), and the JSON reading that names the file when it is broken."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from eca_core.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temp name keeps the final suffix (``x.h5`` -> ``.x.h5.tmp-abc.h5``) so libraries that
    look at extensions (h5py, anndata, matplotlib) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to {tmp_path}")
        os.replace(tmp_path, path)
    except BaseException:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the published folder's mode
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and paths are converted)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, error: type[Exception] = InputError, hint: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` naming the file (and ``hint``: what to do) when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON: {exc}" + (f"; {hint}" if hint else "")) from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def plain_name(value: Any, where: str, error: type[Exception] = InputError) -> str:
    """``value`` if it is a plain name, safe as one path component; ``error`` naming ``where`` otherwise.

    The rule for every id that becomes a file or folder name (slide ids from manifests and metadata,
    sample ids): a non-empty string without path separators, NUL or control characters, not ``.`` or
    ``..``, not starting with ``.`` (hidden and temp names are the runner's).
    """
    text = value if isinstance(value, str) else None
    if (not text or text in (".", "..") or text.startswith(".") or any(c in text for c in "/\\")
            or any(ord(c) < 32 for c in text)):
        raise error(f"{where}: {value!r} is not a plain name (ids become file names: no path separators, no leading '.')")
    return text


def inside(root: str | os.PathLike, relative: Any, where: str, error: type[Exception] = InputError) -> Path:
    """``root / relative`` for a relative path that stays inside ``root``; ``error`` naming ``where`` otherwise."""
    rel = Path(relative) if isinstance(relative, str) and relative else None
    if rel is None or rel.is_absolute() or ".." in rel.parts:
        raise error(f"{where}: {relative!r} is not a path inside {root}")
    return Path(root) / rel


def require_self_contained_h5(path: str | os.PathLike, error: type[Exception] = InputError) -> None:
    """The rule for every HDF5 file read from elsewhere: its bytes are its own.

    External links, datasets with external storage and virtual datasets make h5py read *other* local
    files, whose bytes would then travel into outputs and shipped models; each is refused with
    ``error`` naming the file and the object. Soft links inside the file are fine.
    """
    import h5py

    def walk(group: Any, prefix: str) -> None:
        for name in group:
            where = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise error(f"{path}: {where} is an external link to {link.filename}:{link.path}; "
                            f"HDF5 inputs must be self-contained")
            if isinstance(link, h5py.SoftLink):
                continue
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, where)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise error(f"{path}: {where} is a virtual dataset (reads other files); HDF5 inputs must be self-contained")
                if obj.external:
                    raise error(f"{path}: {where} stores its data in external file(s) {[e[0] for e in obj.external]}; "
                                f"HDF5 inputs must be self-contained")

    with h5py.File(path, "r") as f:
        walk(f, "")


@contextmanager
def open_own_h5(path: str | os.PathLike, error: type[Exception] = InputError, kind: str = "HDF5") -> Iterator[Any]:
    """An HDF5 file read from elsewhere, open for reading: refused unless self-contained, and anything unreadable in it
    (a truncated file, a missing dataset, a bad dtype) raised as ``error`` naming the file in one line."""
    import h5py

    try:
        require_self_contained_h5(path, error)
        with h5py.File(path, "r") as f:
            yield f
    except error:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise error(f"{path}: not a readable {kind} file (truncated or corrupt?): {' '.join(str(exc).split())[:200]}") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
