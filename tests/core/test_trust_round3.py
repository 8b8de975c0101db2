"""Reliability round 3, core: the lock follows the rank that writes; a swapped file of the same size and date is new."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eca_core.errors import LockError
from eca_core.runner.resume import LOCK_NAME, RunLock, content_hash

ROOT = Path(__file__).resolve().parents[2]


def test_local_rank_in_the_environment_still_takes_the_lock(tmp_path, monkeypatch):
    """A single process with LOCAL_RANK=1 left in its environment writes as rank 0, so it holds the lock too."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).is_file()
        code = ("import sys; from eca_core.runner.resume import RunLock\n"
                f"try:\n    RunLock({str(tmp_path / 'run')!r}).__enter__()\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(3)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "LOCAL_RANK": "1"})
        assert out.returncode == 3 and "LockError" in out.stdout and "in use by another run" in out.stdout
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_same_size_same_mtime_replacement_is_hashed_again(tmp_path):
    """What ``cp -p`` / ``rsync -a`` / ``tar x`` leave: other bytes, the same size and mtime."""
    path = tmp_path / "slide.bin"
    path.write_bytes(b"A" * 4096)
    st = path.stat()
    first = content_hash(path)
    assert content_hash(path) == first  # cached, same answer
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(b"B" * 4096)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)  # rsync -a / tar x: a new file put in place
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert content_hash(path) != first
    path.write_bytes(b"C" * 4096)  # cp -p onto the existing file: same inode, same size, mtime set back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    import hashlib

    assert content_hash(path) == hashlib.sha256(b"C" * 4096).hexdigest()


def test_a_pipeline_input_swapped_with_cp_p_reruns_its_stage(tmp_path):
    from eca_core.runner.pipeline import PipelineSpec, run_pipeline

    (tmp_path / "input.txt").write_text("21")
    spec = PipelineSpec.from_dict({"name": "t", "stages_module": "tests.core.stage_fixtures", "run_dir": str(tmp_path / "run"),
                                   "stages": {"make": {"input": str(tmp_path / "input.txt")}, "scale": {}}})
    run_pipeline(spec, log=lambda s: None)
    st = (tmp_path / "input.txt").stat()
    (tmp_path / "input.txt").write_text("42")
    os.utime(tmp_path / "input.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    lines: list[str] = []
    run_pipeline(spec, log=lines.append)
    assert (tmp_path / "run/make/value.txt").read_text() == "42"
    assert not any("make: up to date" in line for line in lines), lines


def _run_cli(argv, capsys) -> tuple[int, str]:
    from eca_core.runner.cli import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    import time

    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):  # 9^9 = 387 million strings from 1.6 KB
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("name: t\nstages_module: tests.core.stage_fixtures\nstages:\n  make:\n    input: x\n    junk:\n"
                    + "".join(f"      {line}\n" for line in lines))
    start = time.time()
    code, err = _run_cli(["run", str(path)], capsys)
    assert code == 2 and time.time() - start < 10
    assert err.strip() == f"eca run: error: {path}: expands to over 100,000 values through its aliases (an alias bomb?); configs are small"


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("name: t\nstages_module: tests.core.stage_fixtures\nstages:\n  make: {input: x}\n  make: {input: y}\n")
    code, err = _run_cli(["run", str(path)], capsys)
    assert code == 2 and "duplicate key 'make' (first given on line 4)" in err and len(err.strip().splitlines()) == 1
    merged = tmp_path / "merge.yaml"  # overriding a merged key is not a duplicate
    (tmp_path / "in.txt").write_text("3")
    merged.write_text(f"name: t\nstages_module: tests.core.stage_fixtures\nrun_dir: {tmp_path / 'run'}\nstages:\n"
                      f"  make: &m {{input: {tmp_path / 'in.txt'}, factor: 2}}\n  scale: {{<<: *m, epochs: 2}}\n")
    from eca_core.runner.config import read_yaml

    assert read_yaml(merged)["stages"]["scale"] == {"input": str(tmp_path / "in.txt"), "factor": 2, "epochs": 2}


def test_stages_module_must_be_a_registry_before_anything_is_imported(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "evil_stages.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nSTAGES = {{}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nstages_module: evil_stages\nstages:\n  make: {}\n")
    code, err = _run_cli(["run", str(path)], capsys)
    assert code == 2 and not marker.exists()
    assert "stages_module 'evil_stages' is not a stage registry of this project" in err and "ECA_STAGES_MODULES" in err


def test_a_published_folder_has_the_umask_mode_and_its_killed_temp_twin_is_cleaned(tmp_path):
    from eca_core.io import atomic_dir
    from eca_core.runner.resume import clean_temp_files

    out = tmp_path / "evaluate"
    with atomic_dir(out) as tmp:
        (tmp / "report.md").write_text("ok")
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700
    stale = tmp_path / ".evaluate.tmp-k1ll3d"  # what SIGKILL inside atomic_dir leaves beside the folder
    stale.mkdir()
    (stale / "report.md").write_text("half")
    old = tmp_path / ".evaluate.old-1234"
    old.mkdir()
    other = tmp_path / ".evaluated.tmp-keep"  # another folder's temp: not ours to remove
    other.mkdir()
    removed = clean_temp_files(out)
    assert stale in removed and old in removed and not stale.exists() and not old.exists() and other.exists()
    assert (out / "report.md").read_text() == "ok"


def test_the_error_that_ended_a_run_is_not_hidden_behind_the_lock(tmp_path, monkeypatch):
    lock_path = tmp_path / "run" / LOCK_NAME
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == lock_path:
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok=missing_ok)

    with pytest.raises(PermissionError, match=r"read-only: .*report.md"):
        with RunLock(tmp_path / "run"):
            monkeypatch.setattr(Path, "unlink", unlink)
            raise PermissionError(13, "read-only", str(tmp_path / "run" / "report.md"))
    monkeypatch.undo()
    lock_path.unlink()
    with pytest.raises(LockError, match="could not remove the lock"):  # a clean run still says what is left behind
        with RunLock(tmp_path / "run"):
            monkeypatch.setattr(Path, "unlink", unlink)
