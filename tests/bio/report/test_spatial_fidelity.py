"""Moran's I on the spot graph: smooth maps near 1, checkerboards near -1, the ratio shows over-smoothing."""

import numpy as np
import pytest

from eca_bio.report.spatial_fidelity import fidelity, morans_i, spot_graph


def _grid(n=12):
    return np.array([[x, y] for x in range(n) for y in range(n)], dtype=float)


def test_morans_i_of_known_maps():
    xy = _grid()
    smooth = xy[:, 0] + xy[:, 1]
    checker = ((xy[:, 0] + xy[:, 1]) % 2).astype(float)
    noise = np.random.default_rng(0).normal(size=len(xy))
    i = morans_i(np.stack([smooth, checker, noise, np.ones(len(xy))], 1), xy, k=4)
    assert i[0] > 0.8 and i[1] < -0.5 and abs(i[2]) < 0.15 and np.isnan(i[3])  # constant: undefined
    g = spot_graph(xy, k=4)
    assert (g != g.T).nnz == 0 and g.diagonal().sum() == 0


def test_morans_i_equals_scanpys():
    import scanpy as sc

    xy = np.random.default_rng(2).uniform(0, 50, size=(90, 2))
    values = np.random.default_rng(3).normal(size=(90, 5)) + xy[:, :1] / 25
    ours = morans_i(values, xy)
    np.testing.assert_allclose(ours, np.asarray(sc.metrics.morans_i(spot_graph(xy), values.T)), rtol=1e-9, atol=1e-12)


def test_fidelity_flags_predictions_smoother_than_the_tissue():
    xy = _grid()
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(len(xy), 3)) + 0.3 * (xy[:, :1] / 12)  # mostly spot-level variation
    pred = np.repeat((xy[:, :1] + xy[:, 1:]) / 24, 3, axis=1) + 0.01 * rng.normal(size=(len(xy), 3))  # a smooth blob
    f = fidelity(pred, truth, xy, np.array(["A"] * 72 + ["B"] * 72), ["g0", "g1", "g2"])
    assert f["moran_pred"] > 0.5 > f["moran_truth"] and f["moran_ratio"] > 2
    assert set(f["per_gene"]["g1"]) == {"pred", "truth", "ratio"}
    with pytest.raises(ValueError, match="at least 2 spots"):
        spot_graph(xy[:1])
