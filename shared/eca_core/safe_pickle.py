"""Loading pickles from elsewhere without running their code: an allow-list unpickler.

A pickle can name any importable callable and have it called on load (``__reduce__``), so a
crafted file runs code the moment ``pickle.load`` touches it. :func:`load_restricted` resolves
only the globals in an allow-list (e.g. what numpy needs to rebuild arrays) and refuses anything
else with :class:`~eca_core.errors.UnsafeFileError` naming the file and the global, before it is
imported or called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Iterable

from eca_core.errors import InputError, UnsafeFileError

# What pickled numpy arrays, dtypes and scalars need (numpy 1.x and 2.x module names).
NUMPY_GLOBALS = frozenset(
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
BUILTIN_GLOBALS = frozenset({("builtins", n) for n in ("list", "dict", "tuple", "set", "frozenset", "str", "bytes",
                                                          "bytearray", "int", "float", "complex", "bool", "slice")}
                            | {("collections", "OrderedDict"), ("_codecs", "encode")})


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``allowed`` (module, name) globals."""

    def __init__(self, file: Any, allowed: Iterable[tuple[str, str]], where: str, max_bytes: int | None = None) -> None:
        super().__init__(file)
        self.allowed = frozenset(allowed)
        self.where = where
        self.max_bytes = max_bytes  # an array built from the file holds at most the file's bytes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise UnsafeFileError(f"{self.where}: refused to load: the pickle references {module}.{name}, which is not "
                                  f"allowed in this kind of file (nothing in it was run)")
        found = super().find_class(module, name)
        if name == "_reconstruct" and self.max_bytes is not None:
            return self._bounded(found)
        return found

    def _bounded(self, reconstruct: Any) -> Any:
        """numpy's ``_reconstruct`` refusing a shape larger than the file (a memory bomb: a few bytes asking for a TiB)."""
        import numpy as np

        def checked(subtype: Any, shape: Any, dtype: Any) -> Any:
            n = int(np.prod(np.asarray(shape, dtype=np.float64))) * np.dtype(dtype).itemsize
            if n > self.max_bytes:
                raise UnsafeFileError(f"{self.where}: refused to load: an array of {n:,} bytes from a {self.max_bytes:,}-byte "
                                      f"file (a memory bomb?)")
            return reconstruct(subtype, shape, dtype)

        return checked

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.where}: refused to load: the pickle uses persistent ids")


def load_restricted(path: str | Path, allowed: Iterable[tuple[str, str]] = NUMPY_GLOBALS | BUILTIN_GLOBALS) -> Any:
    """Unpickle ``path`` allowing only ``allowed`` globals; unreadable files raise :class:`InputError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, str(path), max_bytes=len(data)).load()
    except UnsafeFileError:
        raise
    except MemoryError as exc:
        raise InputError(f"{path}: refused: unpickling it needs more memory than there is ({exc})") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, ImportError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
