"""`eca-bio diagnose` reads a preprocess folder's token sets with their expression targets; `eca diagnose` stays format-neutral."""

import json

from eca_bio.features.preprocess import run_preprocess
from eca_bio.cli import main as bio_main
from eca_core.runner.cli import main as eca_main

from tests.bio.conftest import make_legacy_st
from tests.bio.features.test_preprocess import CPU, cfg_for


def test_diagnose_a_preprocess_folder_finds_its_targets(tmp_path, capsys):
    for k in range(2):
        make_legacy_st(tmp_path / "st" / f"S{k}", section=f"S{k}", n=5)
    run_preprocess(cfg_for(st_dir=str(tmp_path / "st"), token_grid=2), tmp_path / "pre", CPU, progress=False)
    assert bio_main(["diagnose", str(tmp_path / "pre"), "--genes", "5", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("targets: log10(1 + counts) of the top 5 genes") == 2 and "Theorem 2.2" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert len(report["files"]) == 2 and len(report["files"][0]["outputs"]) == 5
    assert report["files"][0]["output_names"][0].startswith("GENE") and report["files"][0]["n_sets"] == 25


def test_core_diagnose_points_a_folder_to_eca_bio_diagnose(tmp_path, capsys):
    assert eca_main(["diagnose", str(tmp_path)]) == 2
    assert "eca-bio diagnose" in capsys.readouterr().err
    assert bio_main(["diagnose", str(tmp_path)]) == 2  # no manifest: one line
    assert "manifest" in capsys.readouterr().err
