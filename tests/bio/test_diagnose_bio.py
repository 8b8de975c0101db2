"""`eca diagnose` on a bio preprocess folder or slide file finds the expression targets itself."""

import json

from eca_bio.preprocess import run_preprocess
from eca_core.cli import main as eca_main

from .conftest import make_legacy_st
from .test_preprocess import CPU, cfg_for


def test_diagnose_a_preprocess_folder_finds_its_targets(tmp_path, capsys):
    for k in range(2):
        make_legacy_st(tmp_path / "st" / f"S{k}", section=f"S{k}", n=5)
    run_preprocess(cfg_for(st_dir=str(tmp_path / "st"), token_grid=2), tmp_path / "pre", CPU, progress=False)
    assert eca_main(["diagnose", str(tmp_path / "pre"), "--genes", "5", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("targets: log10(1 + counts) of the top 5 genes of") == 2 and "Theorem 2.2" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert len(report["files"]) == 2 and len(report["files"][0]["outputs"]) == 5
    assert report["files"][0]["output_names"][0].startswith("GENE") and report["files"][0]["n_sets"] == 25
