"""Homogeneity diagnostics: hand numpy checks, the Theorem 2.2 bound on random convex attention, the CLI."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from eca_core.runner.cli import main as eca_main
from eca_core.diagnostics import homogeneity_report, mean_pool_baseline, ridge_fit, set_statistics, theorem22_bound
from eca_core.metrics import pearson_per_column


def test_set_statistics_match_numpy_with_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7, 3))
    mask = np.ones((5, 7), bool)
    mask[1, 4:] = False
    mask[3, 1:] = False  # a single element: d = R = 0
    xbar, d, r = set_statistics(x, mask)
    for i in range(5):
        elems = x[i][mask[i]]
        m = elems.mean(0)
        dist = np.linalg.norm(elems - m, axis=1)
        np.testing.assert_allclose(xbar[i], m, atol=1e-5)
        np.testing.assert_allclose(d[i], np.sqrt((dist**2).mean()), atol=1e-3)
        np.testing.assert_allclose(r[i], dist.max(), atol=1e-3)
    assert d[3] == 0 and r[3] == 0 and np.all(d <= r + 1e-6)


def test_report_matches_hand_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6, 4)) * 0.1 + rng.normal(size=(40, 1, 4))
    y = x.mean(1) @ np.array([1.0, -0.5, 0.2, 0.0]) + 0.05 * rng.normal(size=40)
    rep = homogeneity_report(x, y=y, alpha=1e-3)
    xbar = x.mean(1)
    dist = np.linalg.norm(x - xbar[:, None], axis=2)
    d, R = np.sqrt((dist**2).mean(1)), dist.max(1)
    assert rep.d_mean == pytest.approx(d.mean(), rel=1e-3)
    assert rep.R_rms == pytest.approx(np.sqrt((R**2).mean()), rel=1e-3)
    assert rep.cross_dispersion == pytest.approx(np.sqrt(((xbar - xbar.mean(0)) ** 2).sum(1).mean()), rel=1e-4)
    Xc, yc = xbar - xbar.mean(0), y - y.mean()
    w = np.linalg.solve(Xc.T @ Xc + 1e-3 * 40 * np.eye(4), Xc.T @ yc)
    pred = xbar @ w
    (out,) = rep.outputs
    assert out.rho0 == pytest.approx(np.corrcoef(pred, y)[0, 1], abs=1e-6)
    sigma_t = np.std(pred) / np.linalg.norm(w)
    assert out.sigma_tilde == pytest.approx(sigma_t, rel=1e-6)
    assert out.r == pytest.approx(rep.R_rms / sigma_t, rel=1e-6)
    assert out.bound == pytest.approx(2 * out.r / (1 - out.r), rel=1e-6)


def test_theorem22_bound_holds_for_random_convex_attention():
    """ρ_att − ρ_0 ≤ 2r/(1 − r) for Dirichlet-weighted (convex) aggregation with the ridge head, whenever r < 1."""
    rng = np.random.default_rng(2)
    checked = 0
    for trial in range(300):
        n, t, dim = 60, int(rng.integers(2, 12)), int(rng.integers(2, 8))
        spread = 10 ** rng.uniform(-2, 0)
        x = rng.normal(size=(n, 1, dim)) + spread * rng.normal(size=(n, t, dim))
        y = rng.normal(size=n) + x[:, rng.integers(t), :] @ rng.normal(size=dim)
        rho0, w, b = mean_pool_baseline(x, y)
        _, _, R = set_statistics(x)
        xbar = x.mean(1)
        w = w[:, 0]
        r = np.sqrt((R**2).mean()) / (np.std(xbar @ w) / np.linalg.norm(w))
        bound = theorem22_bound(r)
        if bound is None:
            assert r >= 1
            continue
        for _ in range(5):
            alpha = rng.dirichlet(np.full(t, 10 ** rng.uniform(-1, 1)), size=n)  # (n, t) convex weights
            z = (alpha[:, :, None] * x).sum(1)
            rho_att = pearson_per_column(z @ w, y)[0]
            assert rho_att - rho0[0] <= bound + 1e-9, (trial, rho_att, rho0[0], bound)
        checked += 1
    assert checked > 100  # the valid regime was actually exercised


def test_bound_not_valid_when_r_at_least_one():
    assert theorem22_bound(1.0) is None and theorem22_bound(3.0) is None
    assert theorem22_bound(0.5) == pytest.approx(2.0)


def test_ridge_fit_recovers_linear_map():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([2.0, -1.0, 0.5]) + 3.0
    w, b = ridge_fit(X, y, alpha=0.0)
    np.testing.assert_allclose(w[:, 0], [2.0, -1.0, 0.5], atol=1e-8)
    np.testing.assert_allclose(b, [3.0], atol=1e-8)


def test_cli_on_npz_with_lengths_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 5, 4)).astype(np.float32)
    lengths = rng.integers(1, 6, size=30)
    y = rng.normal(size=(30, 2))
    np.savez(tmp_path / "sets.npz", feats=x, n=lengths, target=y)
    out = tmp_path / "diag.json"
    assert eca_main(["diagnose", str(tmp_path / "sets.npz"), "--x", "feats", "--lengths", "n", "--y", "target", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rho_0" in text and "hull radius" in text
    data = json.loads(out.read_text())
    mask = np.arange(5)[None] < lengths[:, None]
    _, d, _ = set_statistics(x, mask)
    assert data["d_mean"] == pytest.approx(float(d.mean()), rel=1e-6)
    assert len(data["outputs"]) == 2 and data["output_names"] == ["y0", "y1"]


def test_cli_on_bio_h5_tokens_without_targets(tmp_path, capsys):
    rng = np.random.default_rng(5)
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as f:
        f["tokens"] = rng.normal(size=(12, 9, 8)).astype(np.float32)
        f["coords"] = rng.integers(0, 100, size=(12, 2))
    out = tmp_path / "d.json"
    assert eca_main(["diagnose", str(path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "need targets" in text
    data = json.loads(out.read_text())
    assert data["n_sets"] == 12 and data["max_elements"] == 9 and data["outputs"] == []


def test_cli_targets_from_separate_file(tmp_path, capsys):
    rng = np.random.default_rng(6)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["tokens"] = rng.normal(size=(20, 4, 3))
    np.save(tmp_path / "y.npy", rng.normal(size=20))
    assert eca_main(["diagnose", str(tmp_path / "s.h5"), "--y-file", str(tmp_path / "y.npy")]) == 0
    assert "rho_0" in capsys.readouterr().out


def test_cli_errors_name_file_and_key(tmp_path, capsys):
    """Each bad input: exit code 2 and one stderr line naming the file and the problem, no traceback."""
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3, 2)), mask=np.ones((4, 2), bool))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 3)))
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3, 2)), y=np.zeros(5))
    cases = [
        (["a.npz", "--x", "feats"], r"a\.npz: no sets key 'feats'; keys in the file: \['mask', 'x'\]"),
        (["a.npz"], r"a\.npz: mask 'mask' shape \(4, 2\) does not match"),
        (["b.npz"], r"b\.npz: sets 'x' must have shape \(sets, elements, dim\), got \(4, 3\)"),
        (["c.npz"], r"c\.npz: targets 'y' shape \(5,\) does not match 4 sets"),
        (["missing.h5"], r"missing\.h5: no such file"),
    ]
    for args, pattern in cases:
        capsys.readouterr()
        assert eca_main(["diagnose", str(tmp_path / args[0]), *args[1:]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(r"^eca diagnose: error: .*" + pattern, err), err
