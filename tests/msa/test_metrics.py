"""MMSA metricsTop rules checked against a hand-computed example."""

import numpy as np
import pytest

from eca_msa.metrics import mosi_regression_metrics, regression_metrics, sims_regression_metrics

# truth has an exact 0 (dropped by Non0), a 2.5 (np.round half-to-even → 2), and the prediction 0.0
# counts as positive for Has0 (>= 0) but as negative for Non0 (> 0).
TRUTH = np.array([2.4, -1.6, 0.0, 0.6, -0.4, 2.5])
PRED = np.array([1.5, -0.2, 0.4, -0.3, 0.0, 3.6])


def test_mosi_metrics_match_hand_computation():
    m = mosi_regression_metrics(PRED, TRUTH)
    # Has0: truth>=0 [T F T T F T], pred>=0 [T F T F T T] -> 4/6 right.
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # per class F1: True (support 4) P=R=3/4 -> 0.75; False (support 2) P=R=1/2 -> 0.5; weighted (4*.75+2*.5)/6
    assert m["Has0_F1_score"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # Non0: drop index 2; truth>0 [T F T F T], pred>0 [T F F F T] -> 4/5
    assert m["Non0_acc_2"] == pytest.approx(0.8)
    # True (support 3): P=1, R=2/3 -> 0.8; False (support 2): P=2/3, R=1 -> 0.8
    assert m["Non0_F1_score"] == pytest.approx(0.8)
    # Acc-5: clip ±2, round: truth [2 -2 0 1 0 2], pred [2 0 0 0 0 2] -> 4/6
    assert m["Mult_acc_5"] == pytest.approx(4 / 6)
    # Acc-7: clip ±3, round: truth [2 -2 0 1 0 2], pred [2 0 0 0 0 3] -> 3/6 (2.5 rounds to 2)
    assert m["Mult_acc_7"] == pytest.approx(0.5)
    assert m["MAE"] == pytest.approx((0.9 + 1.4 + 0.4 + 0.9 + 0.4 + 1.1) / 6)
    # centred sums: Σtp = 9.823333, Σt² = 13.048333, Σp² = 11.333333 (of the float32 values, as MMSA scores them)
    assert m["Corr"] == pytest.approx(9.8233333333 / np.sqrt(13.0483333333 * 11.3333333333), rel=1e-6)
    assert regression_metrics(PRED, TRUTH, "mosei") == m


def test_weighted_f1_differs_from_macro_and_binary():
    m = mosi_regression_metrics(PRED, TRUTH)
    assert m["Has0_F1_score"] != pytest.approx((0.75 + 0.5) / 2)  # macro
    assert m["Has0_F1_score"] != pytest.approx(0.75)  # binary, positive class


def test_sims_metrics_hand_example():
    truth = np.array([-0.8, -0.2, 0.0, 0.4, 1.0])
    pred = np.array([-0.6, 0.05, -0.05, 0.8, 1.4])  # 1.4 is clipped to 1
    m = sims_regression_metrics(pred, truth)
    # 2 classes (<=0 | >0): truth [0 0 0 1 1], pred [0 1 0 1 1] -> 4/5
    assert m["Mult_acc_2"] == pytest.approx(0.8)
    # 3 classes (<=-0.1 | <=0.1 | >0.1): truth [0 0 1 2 2], pred [0 1 1 2 2] -> 4/5
    assert m["Mult_acc_3"] == pytest.approx(0.8)
    # 5 classes (-0.7, -0.1, 0.1, 0.7): truth [0 1 2 3 4], pred [1 2 2 4 4] -> 2/5
    assert m["Mult_acc_5"] == pytest.approx(0.4)
    assert m["MAE"] == pytest.approx((0.2 + 0.25 + 0.05 + 0.4 + 0.0) / 5)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="values"):
        mosi_regression_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        mosi_regression_metrics(np.array([np.nan, 1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="unknown data set"):
        regression_metrics(PRED, TRUTH, "iemocap")


def test_sims_bins_are_evaluated_in_float32_as_mmsa_does():
    # float32(0.1) and float32(-0.7) are the labels as MMSA holds them; in float32 they sit exactly on the
    # bin edges (-0.1, 0.1] and (-1.01, -0.7], where MMSA puts them. Computed in float64 they would fall
    # one bin higher (0.1000000015 > 0.1, -0.6999999881 > -0.7): Acc-3 0.75 and Acc-5 0.5 instead of 1.
    truth = np.array([0.1, -0.7, 0.5, -0.5], dtype=np.float32)
    pred = np.array([0.05, -0.75, 0.5, -0.5], dtype=np.float32)
    m = sims_regression_metrics(pred, truth)
    assert m["Mult_acc_3"] == 1.0 and m["Mult_acc_5"] == 1.0


def test_mmsa_validation_loss_is_the_rounded_mean_of_batch_mses():
    from eca_msa.metrics import mmsa_loss

    pred, truth = np.array([1.0, 2.0, 3.0, 0.0, 0.5]), np.array([0.0, 2.0, 1.0, 0.0, 0.0])
    # batches of 2: MSEs 0.5, 2.0, 0.25 → mean 0.916666… → 0.9167 (the all-clip MSE would be 1.05)
    assert mmsa_loss(pred, truth, 2) == 0.9167
