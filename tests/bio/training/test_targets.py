"""Targets: transforms, gene selection and min–max from training slides only, missing genes, bad slide files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from eca_bio.features.feature_set import DataError, FeatureSet
from eca_bio.training.targets import fit_targets, make_targets, select_genes, transform_counts
from tests.bio.fixtures_model import make_preprocess_dir


def test_transforms_match_their_formulas():
    counts = np.array([[9.0, 0.0, 1.0], [99.0, 1.0, 0.0]])
    np.testing.assert_allclose(transform_counts(counts, "egn"), np.log10(counts + 1))
    lib = transform_counts(counts, "libsize")
    np.testing.assert_allclose(lib[0], np.log1p(counts[0] * 1e4 / 10.0))
    np.testing.assert_allclose(lib[1], np.log1p(counts[1] * 1e4 / 100.0))
    with pytest.raises(ValueError, match="unknown target transform"):
        transform_counts(counts, "log2")


def test_gene_selection_and_minmax_use_training_slides_only(tmp_path):
    slides = FeatureSet(make_preprocess_dir(tmp_path / "pre", n_slides=3, n_genes=12)).slides()
    train, test = slides[:2], slides[2]
    # a gene that only the test slide expresses, hugely: it must not be selected
    test.counts.X = np.asarray(test.counts.X).copy()
    test.counts.X[:, -1] = 1e6
    genes = select_genes(train, 5)
    assert "G011" not in genes
    pooled = np.concatenate([np.asarray(s.counts.X) for s in train])
    expected = [f"G{i:03d}" for i in np.argsort(-pooled.sum(0), kind="stable")[:5]]
    assert genes == expected
    spec = fit_targets(train, "egn", 5)
    y_train = np.concatenate([make_targets(s, spec)[0] for s in train])
    np.testing.assert_allclose(y_train.min(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(y_train.max(0), 1.0, atol=1e-6)
    # statistics are the training ones: the test slide (4x depth) is scaled with them, not re-normalised
    y_test, _ = make_targets(test, spec)
    raw = np.log10(np.asarray(test.counts[:, genes].X, dtype=np.float64) + 1)
    np.testing.assert_allclose(y_test, (raw - spec.minimum) / (spec.maximum - spec.minimum), rtol=1e-5)
    assert spec.train_slides == [s.slide_id for s in train]


def test_missing_genes_are_zero_and_reported(tmp_path):
    slides = FeatureSet(make_preprocess_dir(tmp_path / "pre", n_slides=3, missing_gene=True)).slides()
    spec = fit_targets(slides[:2], "libsize", 30)
    y, missing = make_targets(slides[2], spec)
    assert missing == ["G000"]
    assert np.all(y[:, spec.genes.index("G000")] == 0)
    assert make_targets(slides[0], spec)[1] == []


def test_missing_embeddings_other_encoder_and_nan_are_clear_errors(tmp_path):
    pre = make_preprocess_dir(tmp_path / "pre", n_slides=2)
    with h5py.File(pre / "slides/S1.h5", "a") as f:
        f.attrs["encoder_config"] = json.dumps({"name": "another_vit"})
    with pytest.raises(DataError, match=r"S1\.h5: embeddings made with another_vit on 32 um patches at 64 px .*, expected "):
        FeatureSet(pre).slides()
    pre = make_preprocess_dir(tmp_path / "pre2", n_slides=2)
    with h5py.File(pre / "slides/S0.h5", "a") as f:
        feats = f["features"][:]
        feats[3, 2] = np.nan
        f["features"][...] = feats
    from eca_bio.features.slide_h5 import FeatureFileError  # the feature file's own reader refuses it

    with pytest.raises(FeatureFileError, match=r"S0\.h5: features contain NaN/inf in 1 row\(s\), e.g. rows \[3\]"):
        FeatureSet(pre).slides()
    pre = make_preprocess_dir(tmp_path / "pre3", n_slides=2)
    (pre / "slides/S1.h5").unlink()
    with pytest.raises(DataError, match=r"slide S1: embeddings missing"):
        FeatureSet(pre).slides()
