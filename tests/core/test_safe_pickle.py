"""The allow-list unpickler: numpy data loads, a crafted __reduce__ is refused before it runs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from eca_core.errors import InputError, UnsafeFileError
from eca_core.safe_pickle import load_restricted


class Payload:
    """What an attacker pickles: unpickling calls os.system(...)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_dicts_load_and_payloads_are_refused(tmp_path, protocol):
    data = {"train": {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "id": np.array(["a", "b"], dtype=object),
                      "n": np.int64(3), "raw_text": ["hello", "world"]}}
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(data, protocol=protocol))
    back = load_restricted(good)
    np.testing.assert_array_equal(back["train"]["x"], data["train"]["x"])
    assert back["train"]["raw_text"] == ["hello", "world"] and back["train"]["n"] == 3

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": {"x": Payload(marker)}}, protocol=protocol))
    with pytest.raises(UnsafeFileError, match=r"evil\.pkl: refused to load: the pickle references (posix|os)\.system"):
        load_restricted(evil)
    assert not marker.exists()


def test_garbage_is_an_input_error(tmp_path):
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(InputError, match="junk.pkl: not a readable pickle"):
        load_restricted(tmp_path / "junk.pkl")


class _Bomb:
    """A few bytes asking numpy for a 1 TiB array when unpickled."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (2**40,), b"b")


def test_a_memory_bomb_is_refused_before_allocating(tmp_path):
    bomb = tmp_path / "bomb.pkl"
    bomb.write_bytes(pickle.dumps({"train": {"vision": _Bomb()}}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"bomb\.pkl: refused to load: an array of 1,099,511,627,776 bytes from a \d+-byte file"):
        load_restricted(bomb)
    big = {"x": np.ones((300, 400), np.float64)}  # a real array, far larger than any header: still loads
    (tmp_path / "real.pkl").write_bytes(pickle.dumps(big, protocol=2))
    assert load_restricted(tmp_path / "real.pkl")["x"].shape == (300, 400)
