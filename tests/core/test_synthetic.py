"""Synthetic benchmark: generator levels, the gating regressor, training curves, the command's outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eca_core.runner.cli import main as eca_main
from eca_core.diagnostics import set_statistics
from eca_core.synthetic import (LEVEL_CONTRAST, LEVEL_TARGET_D, VARIANTS, GatingRegressor, SyntheticTrainConfig,
                                generate, level_config, train_variant)


def test_generator_shapes_and_key_element():
    cfg = level_config("d=0.73", n_train=50, n_val=20)
    data = generate(cfg, seed=3)
    assert data.x_train.shape == (50, 10, 16) and data.y_train.shape == (50,)
    assert data.x_val.shape == (20, 10, 16) and data.y_val.shape == (20,)
    assert abs(float(data.u @ data.v)) < 1e-6 and float(data.u.norm()) == pytest.approx(1.0)
    # exactly one element per set sits off the centre by the key contrast; the rest are within the noise floor
    dev = (data.x_train - data.x_train.median(dim=1, keepdim=True).values).norm(dim=-1)
    assert bool(((dev > 10 * cfg.sigma_floor).sum(1) == 1).all())
    again = generate(cfg, seed=3)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_val, data.y_val)


def test_levels_hit_their_dispersion_in_increasing_order():
    measured = []
    for level in LEVEL_CONTRAST:
        data = generate(level_config(level, n_train=1500, n_val=10), seed=0)
        _, d, _ = set_statistics(data.x_train)
        measured.append(d.mean())
        assert d.mean() == pytest.approx(LEVEL_TARGET_D[level], rel=0.06), level
    assert all(a < b for a, b in zip(measured, measured[1:]))


def test_kappa_holds_target_signal_fixed():
    for level in LEVEL_CONTRAST:
        cfg = level_config(level)
        assert cfg.kappa * cfg.contrast * cfg.spread / math.sqrt(3) == pytest.approx(cfg.signal)
    with pytest.raises(ValueError, match="unknown homogeneity level"):
        level_config("d=0.5")


def test_gating_regressor_shape_and_softmax_is_convex():
    from eca_core.variants import layer_config

    model = GatingRegressor(16, layer_config("softmax"))
    x = torch.randn(7, 10, 16)
    assert model(x).shape == (7,)
    z, aux = model.pool(x, return_aux=True)
    assert torch.allclose(z[:, 0], (aux.weights[:, 0, 0, :, None] * x).sum(1), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_short_training_gives_finite_curves(variant):
    data = generate(level_config("d=0.42", n_train=200, n_val=50), seed=0)
    result = train_variant(data, variant, SyntheticTrainConfig(epochs=30), seed=0, level="d=0.42")
    for curve in (result.train_pcc, result.val_pcc, result.train_mse, result.val_mse):
        assert len(curve) == 30 and np.all(np.isfinite(curve))
    assert result.val_mse[-1] < result.val_mse[0]  # it learns
    assert (result.mean_lambda == 1.0) == (variant in ("softmax", "no_sra"))


def test_eca_extrapolates_beyond_softmax_on_homogeneous_sets():
    data = generate(level_config("d=0.24", n_train=400, n_val=200), seed=1)
    cfg = SyntheticTrainConfig(epochs=150)
    soft = train_variant(data, "softmax", cfg)
    eca = train_variant(data, "eca", cfg)
    assert eca.mean_lambda > 1.5
    assert eca.final_val_pcc > soft.final_val_pcc + 0.05
    assert eca.final_val_mse < soft.final_val_mse


def test_command_writes_table_json_and_curves(tmp_path, capsys):
    out = tmp_path / "syn"
    argv = ["synthetic", "--out", str(out), "--levels", "d=0.10", "d=0.73", "--variants", "softmax", "eca",
            "--seeds", "2", "--epochs", "15"]
    assert eca_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 * 2 * 2
    summary = results["summary"]
    assert set(summary) == {"d=0.10", "d=0.73"}
    for entry in summary.values():
        assert set(entry["variants"]) == {"softmax", "eca"}
        assert np.isfinite(entry["mse_ratio_eca_over_softmax"]) and -1 <= entry["mean_pool_pcc"] <= 1
    table = (out / "results.md").read_text()
    assert "| d=0.10 |" in table and "mean-pool ridge" in table and "ΔPCC" in table
    for name in ("curves_d0p10.png", "curves_d0p73.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert "ΔPCC" in capsys.readouterr().out


def test_finished_levels_are_reported_as_they_complete():
    from eca_core.synthetic import BenchmarkConfig, run_benchmark

    seen = []
    cfg = BenchmarkConfig(levels=["d=0.10", "d=0.42"], variants=["softmax"], seeds=[0], train=SyntheticTrainConfig(epochs=3), n_train=60, n_val=20)
    final = run_benchmark(cfg, progress=False, on_level=lambda partial: seen.append(list(partial["summary"])))
    assert seen == [["d=0.10"], ["d=0.10", "d=0.42"]]
    assert list(final["summary"]) == ["d=0.10", "d=0.42"]
