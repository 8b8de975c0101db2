"""The report's secondary tables: EGN's settings line and the λ / τ table, from the fold entries evaluate collects."""

from eca_bio.report.tables import egn_lines, lambda_tau_table


def _method(folds):
    return {"folds": folds}


def test_egn_line_names_the_preset_windows_optimisation_and_each_size():
    egn = {"preset": "egn-cpu-small", "window_px": 64, "epochs": 20, "batch_size": 32, "lr": 5e-4, "weight_decay": 1e-4, "k": 6}
    results = {"egn": {"ridge": _method([{"egn": None}]),
                       "egn": _method([{"egn": {**egn, "parameters": 351546}}]),
                       "egn_eca": _method([{"egn": {**egn, "parameters": 359998}}])}}
    (line,) = egn_lines(results)
    assert line == ("- EGN end to end: preset `egn-cpu-small` on 64 px spot windows, up to 20 epochs, batch 32, AdamW lr "
                    "0.0005, weight decay 0.0001, k = 6 exemplars (EGN's optimisation, no search); parameters: egn 351,546, "
                    "egn_eca 359,998")
    assert egn_lines({"egn": {"ridge": _method([{}])}}) == []


def test_lambda_tau_table_pools_runs_and_marks_a_switched_off_part():
    runs = [{"lambda_mean": 1.2, "lambda_min": 1.0, "lambda_max": 1.5}, {"lambda_mean": 1.4, "lambda_min": 1.1, "lambda_max": 1.9}]
    lines = lambda_tau_table({"no_dats": _method([{"lambda_tau": runs[:1]}, {"lambda_tau": runs[1:]}])}, {"no_dats": "ECA w/o DATS"})
    assert "| ECA w/o DATS | 2 | 1.300 [1.000, 1.900] | off |" in lines
    assert lambda_tau_table({"ridge": _method([{}])}, {}) == []
