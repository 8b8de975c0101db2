"""MMSA pickle loading: schema errors, -inf audio, masks from lengths, cache round trip, real shapes."""

import copy
import pickle

import numpy as np
import pytest
import torch

from eca_msa.data import (MMSAFormatError, MSADataModule, from_mmsa_dict, lengths_to_mask, load_any, load_cache,
                          load_mmsa, save_cache)
from eca_msa.synthetic import SyntheticConfig, generate_mmsa


def _write(tmp_path, obj, name="bad.pkl"):
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


def test_accepts_real_mosi_shapes():
    raw = generate_mmsa(SyntheticConfig(n_train=4, n_valid=2, n_test=3))  # MOSI's 50×768, 375×5, 500×20
    data = from_mmsa_dict(raw)
    assert data.shapes() == {"text_len": 50, "text_dim": 768, "audio_len": 375, "audio_dim": 5, "vision_len": 500, "vision_dim": 20}
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [4, 2, 3]
    s = data.splits["train"]
    assert s.text_bert.shape == (4, 3, 50) and s.text_bert.dtype == np.int64
    assert np.isfinite(s.audio).all()


def test_default_split_sizes_are_mosi():
    cfg = SyntheticConfig()
    assert (cfg.n_train, cfg.n_valid, cfg.n_test) == (1284, 229, 686)


def test_missing_split_named(tmp_path, tiny_mmsa):
    bad = {k: v for k, v in tiny_mmsa.items() if k != "valid"}
    path = _write(tmp_path, bad)
    with pytest.raises(MMSAFormatError, match=r"bad\.pkl: missing split\(s\) \['valid'\]"):
        load_mmsa(path)


def test_missing_key_named(tmp_path, tiny_mmsa):
    bad = copy.deepcopy(tiny_mmsa)
    del bad["test"]["vision"]
    with pytest.raises(MMSAFormatError, match=r"split 'test': missing key\(s\) \['vision'\]"):
        load_mmsa(_write(tmp_path, bad))


def test_wrong_rank_named(tmp_path, tiny_mmsa):
    bad = copy.deepcopy(tiny_mmsa)
    bad["train"]["audio"] = bad["train"]["audio"][:, :, 0]  # (N, La) instead of (N, La, Da)
    with pytest.raises(MMSAFormatError, match=r"split 'train', key 'audio': expected rank 3 .* got shape \(32, 20\)"):
        load_mmsa(_write(tmp_path, bad))


def test_wrong_sample_count_and_text_bert_shape(tiny_mmsa):
    bad = copy.deepcopy(tiny_mmsa)
    bad["valid"]["vision_lengths"] = bad["valid"]["vision_lengths"][:-1]
    with pytest.raises(MMSAFormatError, match=r"key 'vision_lengths': 15 entries but 16 samples"):
        from_mmsa_dict(bad)
    bad = copy.deepcopy(tiny_mmsa)
    bad["train"]["text_bert"] = bad["train"]["text_bert"][:, :2]
    with pytest.raises(MMSAFormatError, match=r"key 'text_bert': expected shape \(32, 3, tokens\)"):
        from_mmsa_dict(bad)


def test_not_a_pickle_and_missing_file(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(MMSAFormatError, match="junk.pkl: not a readable pickle"):
        load_mmsa(path)
    with pytest.raises(MMSAFormatError, match="nope.pkl: no such MMSA pickle"):
        load_mmsa(tmp_path / "nope.pkl")


def test_audio_minus_inf_is_zero_and_masks_follow_lengths(tiny_mmsa):
    raw = tiny_mmsa["train"]
    assert np.isneginf(raw["audio"]).any()
    data = from_mmsa_dict(tiny_mmsa)
    s = data.splits["train"]
    where = np.isneginf(raw["audio"])
    assert (s.audio[where] == 0).all() and np.isfinite(s.audio).all()
    np.testing.assert_array_equal(s.vision_mask.sum(1), np.asarray(raw["vision_lengths"]))
    np.testing.assert_array_equal(s.audio_mask.sum(1), np.asarray(raw["audio_lengths"]))
    np.testing.assert_array_equal(s.text_mask, raw["text_bert"][:, 1] > 0)
    # the generator leaves non-zero padding in some clips, as in the released files
    pad = ~s.vision_mask
    assert np.abs(s.vision[pad]).max() > 0


def test_lengths_to_mask_clamps():
    m = lengths_to_mask(np.array([0, 2, 9]), 4)
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def test_cache_round_trip_and_datamodule(tmp_path, tiny_pickle):
    data = load_mmsa(tiny_pickle)
    path = save_cache(data, tmp_path / "cache" / "mmsa_cache.pt")
    back = load_any(path.parent)
    for name in ("train", "valid", "test"):
        a, b = data.splits[name], back.splits[name]
        np.testing.assert_array_equal(a.vision, b.vision)
        np.testing.assert_array_equal(a.vision_mask, b.vision_mask)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.ids == b.ids
    with pytest.raises(MMSAFormatError, match="eca-msa preprocess"):
        load_cache(tmp_path / "empty")
    dm = MSADataModule(back, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["vision"].shape == (8, 40, 20) and batch["vision_mask"].dtype == torch.bool
    assert batch["text_bert"].shape == (8, 3, 12) and batch["label"].shape == (8,)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_malicious_files_never_run(tmp_path, tiny_mmsa, tiny_pickle, capsys):
    """A crafted MMSA pickle and a crafted tensor cache are refused; their payload never runs."""
    from eca_msa.cli import main as cli_main

    marker = tmp_path / "pwned"
    evil = copy.deepcopy(tiny_mmsa)
    evil["train"]["id"] = _Payload(marker)
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(evil, fh)
    capsys.readouterr()
    assert cli_main(["preprocess", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "pre")]) == 2
    err = capsys.readouterr().err
    assert "evil.pkl: refused to load: the pickle references" in err and "system" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "pre").exists()

    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save({"version": 1, "source": "x", "splits": _Payload(marker)}, cache / "mmsa_cache.pt")
    assert cli_main(["train", "--preprocess", str(cache), "--out", str(tmp_path / "train"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "mmsa_cache.pt: not an eca-msa tensor cache, refused without running it" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "train").exists()
