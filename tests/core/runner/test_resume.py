"""Resume machinery: content keys, output records, temp cleanup, the run-directory lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from eca_core.errors import LockError
from eca_core.runner.resume import (LOCK_NAME, RunLock, check_outputs, clean_temp_files, content_hash, file_hash,
                             item_is_current, record_outputs, write_item_marker)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ECA_CACHE_DIR", str(tmp_path / "cache"))


def test_content_hash_sees_same_size_edits_and_is_cached(tmp_path):
    f = tmp_path / "slide.png"
    f.write_bytes(b"A" * 1000)
    first = file_hash(f)
    f.write_bytes(b"B" * 1000)  # same size, other content: a new mtime, so hashed again
    assert file_hash(f) != first
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("1")
    key = content_hash(folder)
    (folder / ".a.txt.tmp-xyz.txt").write_text("half")  # temp files of a live write never change a folder's key
    assert content_hash(folder) == key
    (folder / "a.txt").write_text("2")
    assert content_hash(folder) != key
    assert (tmp_path / "cache" / "content-hashes.sqlite").is_file()


def test_output_records_catch_missing_truncated_and_edited_files(tmp_path):
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "A.h5").write_bytes(b"x" * 100)
    (tmp_path / "manifest.json").write_text("{}")
    record = record_outputs(tmp_path)
    assert sorted(record) == ["manifest.json", "slides/A.h5"] and check_outputs(tmp_path, record) == []
    (tmp_path / "slides" / "A.h5").write_bytes(b"x" * 50)
    assert check_outputs(tmp_path, record) == ["slides/A.h5: changed"]
    (tmp_path / "manifest.json").unlink()
    assert "manifest.json: missing" in check_outputs(tmp_path, record)
    assert check_outputs(tmp_path, None) == ["no output record"]


def test_item_markers(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    write_item_marker(tmp_path / "done.json", "k1", ["model.pt"])
    assert item_is_current(tmp_path / "done.json", "k1")
    assert not item_is_current(tmp_path / "done.json", "k2")
    (tmp_path / "model.pt").write_bytes(b"edited!")
    assert not item_is_current(tmp_path / "done.json", "k1")


def test_clean_temp_files_removes_leftovers_of_a_kill_only(tmp_path):
    (tmp_path / "fold_0" / ".eca.tmp-abc").mkdir(parents=True)
    (tmp_path / "fold_0" / ".eca.tmp-abc" / "best.ckpt").write_bytes(b"ckpt")
    (tmp_path / ".x.h5.tmp-1.h5").write_bytes(b"half")
    (tmp_path / ".old.old-12").mkdir()
    (tmp_path / "keep.h5").write_bytes(b"done")
    (tmp_path / ".hidden_but_not_temp").write_text("keep")
    removed = clean_temp_files(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".hidden_but_not_temp", "fold_0", "keep.h5"]


def test_lock_refuses_a_second_live_holder_and_takes_over_a_dead_one(tmp_path):
    run = tmp_path / "run"
    child = textwrap.dedent(f"""
        import sys, time
        from eca_core.runner.resume import RunLock
        with RunLock({str(run)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match=rf"in use by another run \(pid {proc.pid} on "):
            with RunLock(run):
                pass
    finally:
        proc.kill()
        proc.wait()
    holder = json.loads((run / LOCK_NAME).read_text())  # the killed holder's lock stays behind ...
    assert holder["pid"] == proc.pid
    with RunLock(run):  # ... and is taken over, since its process is gone
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        with RunLock(run):  # re-entrant in one process (a pipeline's stages)
            pass
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


def test_lock_on_an_output_path_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(ValueError, match="out: output path exists and is not a directory"):
        with RunLock(tmp_path / "out"):
            pass


def test_item_marker_with_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    item = "run/train/fold_0"
    os.makedirs(item)
    with open(f"{item}/model.pt", "wb") as fh:
        fh.write(b"w")
    write_item_marker(f"{item}/done.json", "k", [f"{item}/model.pt"])  # as Path.rglob yields them under a relative run dir
    assert json.loads((tmp_path / item / "done.json").read_text())["outputs"].keys() == {"model.pt"}
    assert item_is_current(f"{item}/done.json", "k")
