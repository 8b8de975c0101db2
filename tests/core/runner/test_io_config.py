"""Atomic writes and typed configuration."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from eca_core.runner.config import from_dict, to_dict
from eca_core.io import atomic_dir, atomic_path, write_json_atomic


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.h5"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".h5" and tmp.parent == tmp_path
            tmp.write_text("new-but-partial")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_path_requires_a_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "x.txt"):
            pass


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    write_json_atomic(tmp_path / "j.json", {"x": 1})
    assert (tmp_path / "j.json").read_text().strip().startswith("{")


@dataclass
class Inner:
    k: int = 3
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    opt: float | None = None


def test_from_dict_typed_and_nested():
    cfg = from_dict(Outer, {"lr": 1, "inner": {"k": 5, "mode": "b"}, "tags": ["p"], "opt": None})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner == Inner(5, "b") and cfg.tags == ["p"]
    assert to_dict(cfg) == {"name": "x", "lr": 1.0, "inner": {"k": 5, "mode": "b"}, "tags": ["p"], "opt": None}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"bogus": 1}, r"cfg: unknown key\(s\) \['bogus'\]"),
        ({"lr": "fast"}, "cfg.lr: expected a number"),
        ({"inner": {"mode": "c"}}, r"cfg.inner.mode: 'c' is not one of \['a', 'b'\]"),
        ({"inner": {"k": 1.5}}, "cfg.inner.k: expected an integer"),
    ],
)
def test_from_dict_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(Outer, data, where="cfg")
