"""End to end: generate → preprocess → train (2 epochs, 3 settings × 2 seeds) → evaluate, via the pipeline runner."""

import json

import numpy as np
import pytest

from eca_core.errors import InputError
from eca_core.runner.pipeline import PipelineSpec, run_pipeline
from eca_msa.cli import main as cli_main
from eca_msa.metrics import mosi_regression_metrics
from eca_msa.train import MSATrainConfig, setting_configs

from tests.msa.conftest import TINY

# A narrower ALMT keeps the test fast; the full-size model is exercised in test_almt.py.
SMALL_MODEL = {"dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 32, "hyper_heads": 2, "hyper_dim_head": 16}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("msa_run")
    spec = PipelineSpec.from_dict({
        "name": "msa_test", "stages_module": "eca_msa.stages", "run_dir": str(run_dir),
        "stages": {"generate": dict(TINY, seed=5), "preprocess": {},
                   "train": {"options": ["frozen-text", "select-mae"], "seeds": [0, 1], "epochs": 2, "batch_size": 16, "progress_bar": False, "model": SMALL_MODEL}, "evaluate": {}},
    })
    records = run_pipeline(spec, log=lambda s: None)
    return spec, run_dir, records


def test_pipeline_trains_and_reports_all_settings(pipeline_run):
    spec, run_dir, records = pipeline_run
    assert list(records) == ["generate", "preprocess", "train", "evaluate"]
    report = json.loads((run_dir / "evaluate" / "report.json").read_text())
    assert list(report["settings"]) == ["almt", "almt_pcc", "almt_eca"]
    for setting, entry in report["settings"].items():
        assert entry["seeds"] == [0, 1]
        corr = entry["metrics"]["Corr"]
        assert np.isfinite(corr["mean"]) and corr["std"] >= 0 and len(corr["values"]) == 2
    md = (run_dir / "evaluate" / "report.md").read_text()
    assert "(iii) ALMT + ECA + DNPL" in md and "lowest validation MAE" in md and "never on the test split" in md
    assert "preset `almt-mosi`" in md and "`frozen-text`" in md and "`select-mae`" in md and "ECA/(ii) = " in md and " ± " in md
    png = run_dir / "evaluate" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reported_test_metrics_come_from_the_selected_epoch(pipeline_run):
    _, run_dir, _ = pipeline_run
    for setting in ("almt", "almt_pcc", "almt_eca"):
        run = json.loads((run_dir / "train" / setting / "seed1" / "metrics.json").read_text())
        assert run["epochs_run"] == 2 and len(run["history"]) == 2
        maes = [h["MAE"] for h in run["history"]]
        assert run["best_epoch"] == int(np.argmin(maes))
        assert run["valid"]["MAE"] == pytest.approx(min(maes))
        preds = json.loads((run_dir / "train" / setting / "seed1" / "test_predictions.json").read_text())
        assert len(preds["pred"]) == TINY["n_test"]
        again = mosi_regression_metrics(np.array(preds["pred"]), np.array(preds["truth"]))
        for key, value in again.items():
            assert run["test"][key] == pytest.approx(value, abs=1e-6)
        assert run["model"]["video_attention"]["mode"] == ("eca" if setting == "almt_eca" else "softmax")
        assert run["loss"]["pcc"] == {"almt": "none", "almt_pcc": "plain", "almt_eca": "dnpl"}[setting]


def test_rerun_skips_finished_stages(pipeline_run):
    spec, run_dir, records = pipeline_run
    logs = []
    again = run_pipeline(spec, log=logs.append)
    assert all("skipped" in line for line in logs)
    assert again["train"]["hash"] == records["train"]["hash"]


def test_settings_differ_by_one_flag_each():
    cfg = MSATrainConfig()
    shapes = dict(text_len=50, text_dim=768, audio_len=375, audio_dim=5, vision_len=500, vision_dim=20)
    (m1, l1), (m2, l2), (m3, l3) = (setting_configs(cfg, s, shapes) for s in ("almt", "almt_pcc", "almt_eca"))
    assert m1 == m2 and l1.pcc == "none" and l2.pcc == "plain" and l2.pcc_weight == 1.0
    assert m3.video_attention.mode == "eca" and l3.pcc == "dnpl"
    with pytest.raises(ValueError, match="unknown"):
        MSATrainConfig(settings=["almt_xyz"])


def test_cli_help_and_preprocess_errors(tmp_path, capsys):
    assert cli_main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--help"])
    assert exc.value.code == 0
    capsys.readouterr()
    assert cli_main(["preprocess", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eca-msa preprocess: error: ") and "missing.pkl: no such MMSA pickle" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bert_setting_needs_text_bert_ids(tiny_mmsa, tmp_path):
    from eca_msa.almt import ALMTConfig
    from eca_msa.data import from_mmsa_dict
    from eca_msa.train import train_one

    raw = {name: {k: v for k, v in split.items() if k != "text_bert"} for name, split in tiny_mmsa.items()}
    cfg = MSATrainConfig(model=ALMTConfig(text_model="bert-base-uncased"), epochs=1)
    with pytest.raises(InputError, match="no .text_bert. ids"):
        train_one(from_mmsa_dict(raw, "nobert.pkl"), cfg, "almt", 0, tmp_path)


def test_checkpoint_reproduces_reported_test_predictions(pipeline_run):
    import torch

    from eca_msa.data import MSADataset, load_cache
    from eca_msa.train import ALMTRegressor

    _, run_dir, _ = pipeline_run
    folder = run_dir / "train" / "almt_eca" / "seed0"
    module = ALMTRegressor.load_from_checkpoint(folder / "best.ckpt", map_location="cpu").eval()
    test = MSADataset(load_cache(run_dir / "preprocess").splits["test"])
    with torch.no_grad():
        pred = module(test.tensors).numpy()
    reported = json.loads((folder / "test_predictions.json").read_text())["pred"]
    np.testing.assert_allclose(pred, reported, atol=1e-5)


def test_evaluate_names_a_broken_results_file(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{")
    assert cli_main(["evaluate", "--train", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.json: not valid JSON" in err
