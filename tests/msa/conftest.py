"""Small MMSA-format data sets shared by the msa tests."""

import pickle

import pytest

from eca_msa.synthetic import SyntheticConfig, generate_mmsa

TINY = dict(n_train=32, n_valid=16, n_test=16, text_len=12, text_dim=32, audio_len=20, vision_len=40, key_frames=2)


@pytest.fixture(scope="session")
def tiny_mmsa() -> dict:
    """32/16/16 clips with short sequences (real feature sizes for audio/vision)."""
    return generate_mmsa(SyntheticConfig(**TINY, seed=3))


@pytest.fixture(scope="session")
def tiny_pickle(tmp_path_factory, tiny_mmsa):
    path = tmp_path_factory.mktemp("mmsa") / "tiny.pkl"
    with open(path, "wb") as fh:
        pickle.dump(tiny_mmsa, fh)
    return path
