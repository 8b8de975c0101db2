"""Resume machinery shared by every stage: content keys, output records, stale temp files, a run-directory lock.

- :func:`content_hash` keys an input by its bytes (streamed SHA-256), cached by path + size +
  mtime + ctime + inode so a large WSI is hashed once, not on every run. ctime and the inode are what
  ``cp -p``, ``rsync -a``, ``tar x`` or ``touch -r`` cannot set: a file replaced by another of the same
  size and mtime is hashed again.
- :func:`record_outputs` / :func:`check_outputs` write and verify what a finished stage produced
  (relative path, size, hash): a deleted, truncated or edited output makes the stage run again.
- :func:`clean_temp_files` removes what a killed run left (``.name.tmp-*`` / ``.name.old-*``).
- :class:`RunLock` keeps two processes out of one run directory; a lock whose process died is taken over.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from eca_core.errors import InputError, LockError

TEMP_MARKERS = (".tmp-", ".old-")
LOCK_NAME = ".eca.lock"
_CHUNK = 4 << 20
_memo: dict[tuple[str, int, int, int, int], str] = {}
_db_lock = threading.Lock()


def _cache_path() -> Path | None:
    root = os.environ.get("ECA_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "eca-pipelines")
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return Path(root) / "content-hashes.sqlite"


_TABLE = ("CREATE TABLE IF NOT EXISTS files (path TEXT, size INT, mtime INT, ctime INT, inode INT, sha TEXT, "
          "PRIMARY KEY (path, size, mtime, ctime, inode))")


def _db_get(key: tuple[str, int, int, int, int]) -> str | None:
    path = _cache_path()
    if path is None:
        return None
    try:
        with _db_lock, sqlite3.connect(path, timeout=10) as db:
            db.execute(_TABLE)
            row = db.execute("SELECT sha FROM files WHERE path=? AND size=? AND mtime=? AND ctime=? AND inode=?", key).fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def _db_put(key: tuple[str, int, int, int, int], sha: str) -> None:
    path = _cache_path()
    if path is None:
        return
    try:
        with _db_lock, sqlite3.connect(path, timeout=10) as db:
            db.execute(_TABLE)
            db.execute("DELETE FROM files WHERE path=?", key[:1])
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", (*key, sha))
    except sqlite3.Error:
        pass


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, streamed; cached by (absolute path, size, mtime_ns, ctime_ns, inode)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    key = (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))
    sha = _memo.get(key) or _db_get(key)
    if sha is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        sha = h.hexdigest()
        _db_put(key, sha)
    _memo[key] = sha
    return sha


def content_hash(path: str | os.PathLike) -> str:
    """Content key of a file, or of a folder (relative names + file hashes; temp files ignored)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file() and not is_temp(p)):
            h.update(str(child.relative_to(path)).encode() + b"\0" + file_hash(child).encode())
        return h.hexdigest()
    if not path.exists():
        raise InputError(f"{path}: input does not exist")
    return file_hash(path)


def is_temp(path: Path) -> bool:
    """True for the temp names that atomic writes use (``.x.tmp-…``, ``.x.old-…``) and the lock file."""
    return path.name == LOCK_NAME or (path.name.startswith(".") and any(m in path.name for m in TEMP_MARKERS))


def record_outputs(root: str | os.PathLike, paths: Iterable[str | os.PathLike] | None = None) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256}}`` of ``paths`` (default: every file under ``root``)."""
    root = Path(root)
    if paths is None:
        rels = [p.relative_to(root) for p in root.rglob("*")
                if p.is_file() and not any(is_temp(q) for q in [p, *p.relative_to(root).parents])]
    else:
        rels = [Path(p).relative_to(root) if Path(p).is_absolute() else Path(p) for p in paths]
    out = {}
    for rel in sorted(rels):
        full = root / rel
        out[str(rel)] = {"size": full.stat().st_size, "sha256": file_hash(full)}
    return out


def check_outputs(root: str | os.PathLike, record: dict[str, dict[str, Any]] | None) -> list[str]:
    """Problems with recorded outputs (``'x.h5: missing'``, ``'x.h5: changed'``); empty when all are intact."""
    if not record:
        return ["no output record"]
    root = Path(root)
    problems = []
    for rel, info in record.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != info.get("size") or file_hash(path) != info.get("sha256"):
            problems.append(f"{rel}: changed")
    return problems


def clean_temp_files(root: str | os.PathLike) -> list[Path]:
    """Remove temp files/folders left under ``root`` by a killed run, and those of ``root`` itself beside it
    (``.<root>.tmp-*`` / ``.<root>.old-*``, which an atomic replacement of the whole folder writes); call only
    while holding the run lock."""
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    own = [q for m in TEMP_MARKERS for q in root.parent.glob(f".{glob.escape(root.name)}{m}*")]
    for p in sorted([*root.rglob(".*"), *own], key=lambda q: len(q.parts), reverse=True):
        if p.name == LOCK_NAME or not is_temp(p) or not p.exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _is_secondary_rank() -> bool:
    """A rank other than 0 of a distributed run: the same rule that decides who writes (:func:`distributed.is_main`).

    Locks are taken after :func:`distributed.launch`, so a launched rank knows its rank from the process
    group. ``LOCAL_RANK`` or ``NODE_RANK`` left in the environment of a single process does not make it a
    secondary rank: it writes as rank 0, so it must hold the lock like one.
    """
    from eca_core.runner import distributed

    return not distributed.is_main()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive lock on a run/output directory: ``<dir>/.eca.lock`` holding the holder's pid and host.

    A second process gets :class:`LockError` naming the holder. A lock left by a dead process on this
    host is taken over. Re-entrant within one process (nested stages share the pipeline's lock).
    """

    _held: dict[str, int] = {}

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.key = str(self.dir.resolve())

    def __enter__(self) -> "RunLock":
        if _is_secondary_rank():  # a DDP worker launched by the rank-0 process that holds the lock
            RunLock._held.setdefault(self.key, 0)
            RunLock._held[self.key] += 1
            return self
        if self.key in RunLock._held:
            RunLock._held[self.key] += 1
            return self
        self.created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InputError(f"{self.dir}: output path exists and is not a directory") from None
        except PermissionError:
            raise InputError(f"{self.dir}: cannot create the output directory (permission denied)") from None
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if holder is None:  # being written right now, or garbage: look again
                    continue
                raise LockError(f"{self.dir}: in use by another run (pid {holder.get('pid')} on {holder.get('host')}); "
                                f"wait for it, or delete {self.path} if that process is gone") from None
            except PermissionError:
                raise InputError(f"{self.dir}: output directory is not writable") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            RunLock._held[self.key] = 1
            return self
        raise LockError(f"{self.path}: could not take the lock; delete it if no run is using {self.dir}")

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, json.JSONDecodeError):
            return None

    def __exit__(self, *exc: Any) -> None:
        RunLock._held[self.key] -= 1
        if RunLock._held[self.key] == 0:
            del RunLock._held[self.key]
            if not _is_secondary_rank():
                try:
                    self.path.unlink(missing_ok=True)
                except OSError as error:  # never hide the error that ended the run behind one about the lock
                    if exc[0] is None:
                        raise LockError(f"{self.path}: could not remove the lock ({error.strerror}); "
                                        f"delete it once no run uses {self.dir}") from error
                if self.created:  # a run that wrote nothing (e.g. refused its input) leaves nothing behind
                    try:
                        self.dir.rmdir()
                    except OSError:
                        pass


def write_item_marker(marker: str | os.PathLike, key: str, files: Iterable[str | os.PathLike], extra: dict | None = None) -> None:
    """Record a finished work item (a slide, a fold, a seed): its key and its output files (size, hash).

    ``files`` are paths relative to the marker's folder (or absolute paths inside it). Write the
    marker last: an item without one is unfinished.
    """
    from eca_core.io import write_json_atomic

    marker = Path(marker)

    def rel(f: str | os.PathLike) -> str:
        p = Path(f)
        if not p.is_absolute() and (marker.parent / p).exists():
            return str(p)  # already relative to the marker's folder
        return str(p.resolve().relative_to(marker.parent.resolve()))

    rels = [rel(f) for f in files]
    write_json_atomic(marker, {"key": key, "outputs": record_outputs(marker.parent, rels), **(extra or {})})


def item_is_current(marker: str | os.PathLike, key: str) -> bool:
    """True when ``marker`` records ``key`` and every output it lists is present and unchanged."""
    marker = Path(marker)
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record.get("key") == key and not check_outputs(marker.parent, record.get("outputs"))
