"""Exemplar retrieval: never the query's own slide, never a slide outside the bank; exact vs faiss; bank checks."""

from __future__ import annotations

import numpy as np
import pytest

from eca_bio.model.exemplars import BankMismatchError, ExemplarBank, ExemplarIndex


def _bank(rng, slides=("A", "B", "C"), per=30, dim=8, genes=5):
    emb = rng.normal(size=(per * len(slides), dim)).astype(np.float32)
    sids = np.repeat(list(slides), per)
    return ExemplarBank(emb, rng.uniform(size=(len(emb), genes)), sids, [f"g{i}" for i in range(genes)], "enc")


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_never_own_slide_never_test_slide(backend):
    rng = np.random.default_rng(0)
    bank = _bank(rng)
    index = ExemplarIndex(bank, k=7, backend=backend)
    # training queries: the bank's own rows (their nearest neighbour would be themselves)
    idx, dist = index.query(bank.embeddings, bank.slide_ids)
    assert idx.shape == (90, 7) and (idx >= 0).all()
    assert not (bank.slide_ids[idx] == bank.slide_ids[:, None]).any()
    assert (np.diff(dist, axis=1) >= -1e-5).all()
    # test-slide queries (slide "T" is not in the bank): every exemplar is a training spot
    test = rng.normal(size=(20, 8)).astype(np.float32)
    idx_t, _ = index.query(test, "T")
    assert set(bank.slide_ids[idx_t].ravel()) <= {"A", "B", "C"}
    # a query that duplicates a spot of slide A, asked as slide A, must not get that spot back
    idx_a, _ = index.query(bank.embeddings[:1], ["A"])
    assert 0 not in idx_a[0]


def test_exact_matches_brute_force_and_faiss_agrees():
    rng = np.random.default_rng(1)
    bank = _bank(rng, per=40)
    q = rng.normal(size=(15, 8)).astype(np.float32)
    idx, dist = ExemplarIndex(bank, k=5, backend="exact").query(q, "B")
    allowed = np.flatnonzero(bank.slide_ids != "B")
    d = ((q[:, None, :] - bank.embeddings[None, allowed]) ** 2).sum(-1)
    expected = allowed[np.argsort(d, axis=1, kind="stable")[:, :5]]
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(expected, 1))
    np.testing.assert_allclose(dist, np.sort(d, 1)[:, :5], rtol=1e-4, atol=1e-4)
    idx_f, _ = ExemplarIndex(bank, k=5, backend="faiss").query(q, "B")
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, idx_f)])
    assert overlap > 0.9
    assert ExemplarIndex(bank, k=5, backend="auto", faiss_threshold=10).backend == "faiss"
    assert ExemplarIndex(bank, k=5, backend="auto").backend == "exact"


def test_gather_and_errors():
    rng = np.random.default_rng(2)
    bank = _bank(rng, slides=("A", "B"), per=4)
    index = ExemplarIndex(bank, k=3)
    idx, _ = index.query(bank.embeddings, bank.slide_ids)
    emb, y = index.gather(idx)
    assert emb.shape == (8, 3, 8) and y.shape == (8, 3, 5)
    np.testing.assert_array_equal(y[0], bank.targets[idx[0]])
    with pytest.raises(ValueError, match="only 4 exemplar spots outside slide 'A'; need k=6"):
        ExemplarIndex(bank, k=6).query(bank.embeddings[:2], "A")
    with pytest.raises(ValueError, match="NaN/inf"):
        index.query(np.full((1, 8), np.nan, np.float32))


def test_bank_refuses_other_gene_list_and_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    bank = _bank(rng)
    bank.check_compatible([f"g{i}" for i in range(5)], 8, "enc")
    with pytest.raises(BankMismatchError, match="gene list does not match"):
        bank.check_compatible(["g0", "g1", "g2", "g3", "X"], 8)
    with pytest.raises(BankMismatchError, match="dim 8, the model expects 16"):
        bank.check_compatible([f"g{i}" for i in range(5)], 16)
    bank.save(tmp_path / "bank.npz")
    back = ExemplarBank.load(tmp_path / "bank.npz")
    assert back.genes == bank.genes and back.embedding == "enc"
    np.testing.assert_array_equal(back.slide_ids, bank.slide_ids)
