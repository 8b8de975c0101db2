"""Staged-pipeline runner: skip when unchanged, re-run on change or --from, atomic outputs, clear errors."""

import json
import sys
import textwrap
import types
from pathlib import Path

import pytest

from eca_core.runner.pipeline import validate_pipeline, PipelineError, PipelineSpec, Stage, run_pipeline
from eca_core.io import atomic_path

CALLS: list[str] = []


def _make_module(tmp_path: Path, fail_in: str | None = None) -> str:
    """Register a throwaway stages module: 'make' writes a file from an input, 'double' reads it."""
    name = f"stages_{abs(hash((str(tmp_path), fail_in)))}"
    mod = types.ModuleType(name)

    def make(ctx):
        CALLS.append("make")
        value = int(Path(ctx.config["input"]).read_text()) * ctx.config.get("factor", 1)
        with atomic_path(ctx.out_dir / "value.txt") as tmp:
            tmp.write_text(str(value))
        return {"value": value}

    def double(ctx):
        CALLS.append("double")
        value = int((ctx.stage_dir("make") / "value.txt").read_text())
        if fail_in == "double":
            with atomic_path(ctx.out_dir / "double.txt") as tmp:
                tmp.write_text("partial")
                raise RuntimeError("boom")
        with atomic_path(ctx.out_dir / "double.txt") as tmp:
            tmp.write_text(str(2 * value))

    mod.STAGES = {
        "make": Stage("make", make, inputs=lambda ctx: [Path(ctx.config["input"])]),
        "double": Stage("double", double),
    }
    sys.modules[name] = mod
    return name


def _spec(tmp_path, module, factor=1):
    inp = tmp_path / "input.txt"
    if not inp.exists():
        inp.write_text("21")
    return PipelineSpec.from_dict(
        {"name": "t", "stages_module": module, "run_dir": str(tmp_path / "run"),
         "stages": {"make": {"input": str(inp), "factor": factor}, "double": {}}}
    )


def test_runs_then_skips_then_reruns_on_change(tmp_path):
    module = _make_module(tmp_path)
    CALLS.clear()
    spec = _spec(tmp_path, module)
    rec = run_pipeline(spec, log=lambda s: None)
    assert CALLS == ["make", "double"]
    assert (tmp_path / "run/double/double.txt").read_text() == "42"
    assert rec["make"]["summary"] == {"value": 21}
    done = json.loads((tmp_path / "run/make.done.json").read_text())
    assert done["hash"] == rec["make"]["hash"]

    CALLS.clear()
    run_pipeline(spec, log=lambda s: None)
    assert CALLS == []

    CALLS.clear()  # parameter change re-runs the stage and everything after it
    run_pipeline(_spec(tmp_path, module, factor=2), log=lambda s: None)
    assert CALLS == ["make", "double"]
    assert (tmp_path / "run/double/double.txt").read_text() == "84"

    CALLS.clear()  # input content change re-runs too
    (tmp_path / "input.txt").write_text("5")
    run_pipeline(_spec(tmp_path, module, factor=2), log=lambda s: None)
    assert CALLS == ["make", "double"]

    CALLS.clear()  # --from forces a re-run of that stage only onwards
    run_pipeline(_spec(tmp_path, module, factor=2), from_stage="double", log=lambda s: None)
    assert CALLS == ["double"]


def test_failed_stage_leaves_no_partial_output_and_no_marker(tmp_path):
    module = _make_module(tmp_path, fail_in="double")
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(_spec(tmp_path, module), log=lambda s: None)
    run = tmp_path / "run"
    assert (run / "make.done.json").exists()
    assert not (run / "double.done.json").exists()
    assert list((run / "double").iterdir()) == []


def test_overrides_and_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("ECA_TEST_DIR", "/data/x")
    yml = tmp_path / "p.yaml"
    yml.write_text(textwrap.dedent("""
        name: demo
        stages_module: whatever
        stages:
          make: {path: "${ECA_TEST_DIR}/a", other: "${ECA_UNSET_VAR:-fallback}", n: 1}
    """))
    spec = PipelineSpec.from_yaml(yml).with_overrides(["make.n=3", "make.sub.k=[1, 2]"])
    assert spec.stages["make"] == {"path": "/data/x/a", "other": "fallback", "n": 3, "sub": {"k": [1, 2]}}
    assert spec.run_dir == Path("runs/demo")


def test_bad_pipeline_definitions(tmp_path):
    with pytest.raises(PipelineError, match="no such pipeline file"):
        PipelineSpec.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: {a: {}}\n")
    with pytest.raises(PipelineError, match=r"bad.yaml: missing key\(s\) \['stages_module'\]"):
        PipelineSpec.from_yaml(bad)
    module = _make_module(tmp_path)
    spec = PipelineSpec.from_dict({"name": "t", "stages_module": module, "stages": {"nope": {}}})
    with pytest.raises(PipelineError, match="unknown stage 'nope'"):
        run_pipeline(spec, run_dir=tmp_path / "r", log=lambda s: None)
    with pytest.raises(PipelineError, match="expected STAGE.KEY=VALUE"):
        _spec(tmp_path, module).with_overrides(["nodot=1"])


def test_repository_pipelines_parse():
    root = Path(__file__).resolve().parents[3] / "pipelines"
    files = sorted(root.glob("*.yaml"))
    assert {"msa_mosi.yaml", "msa_mosei.yaml", "msa_sims.yaml", "bio_her2st.yaml", "bio_egn_her2st.yaml"} <= {f.name for f in files}
    for f in files:
        spec = PipelineSpec.from_yaml(f)
        assert spec.stages, f
        configs = validate_pipeline(spec)  # every stage's keys parse into its config
        if f.name.startswith("msa_") and f.name != "msa_demo.yaml":
            preset = {"msa_mosi.yaml": "almt-mosi", "msa_mosei.yaml": "almt-mosei", "msa_sims.yaml": "almt-sims"}[f.name]
            assert configs["train"].preset == preset and configs["train"].dataset == preset.split("-")[1]


def test_one_stage_twice_in_one_run_dir_under_its_own_names(tmp_path):
    """Two preprocess-like entries (say two encoders) and the stages reading each: ``use:`` and ``from:``."""
    (tmp_path / "in.txt").write_text("5")
    spec = PipelineSpec.from_dict({
        "name": "two", "stages_module": "tests.core.stage_fixtures", "run_dir": str(tmp_path / "run"),
        "stages": {"make_a": {"use": "make", "input": str(tmp_path / "in.txt"), "factor": 2},
                   "make_b": {"use": "make", "input": str(tmp_path / "in.txt"), "factor": 3},
                   "scale_a": {"use": "scale", "from": {"make": "make_a"}, "epochs": 1},
                   "scale_b": {"use": "scale", "epochs": 1}},  # no from: the last earlier `make`, make_b
    })
    records = run_pipeline(spec, log=lambda s: None)
    assert list(records) == ["make_a", "make_b", "scale_a", "scale_b"]
    assert (tmp_path / "run" / "scale_a" / "scaled.txt").read_text().startswith("10 ")
    assert (tmp_path / "run" / "scale_b" / "scaled.txt").read_text().startswith("15 ")
    assert (tmp_path / "run" / "make_a" / "value.txt").read_text() == "10"  # both kept, neither overwritten
    later = PipelineSpec.from_dict({"name": "x", "stages_module": "tests.core.stage_fixtures", "stages": {
        "make_a": {"use": "make", "input": "x"}, "scale_a": {"use": "scale", "from": {"make": "make_b"}},
        "make_b": {"use": "make", "input": "x"}}})
    with pytest.raises(PipelineError, match=r"stage 'scale_a' reads \['make_b'\], which must come before it"):
        validate_pipeline(later)  # a later entry's folder may hold a stale earlier run: never read it
    with pytest.raises(PipelineError, match=r"stages.scale_a.from must map needed stages to entries"):
        PipelineSpec.from_dict({"name": "x", "stages_module": "tests.core.stage_fixtures",
                                "stages": {"scale_a": {"use": "scale", "from": {"make": "nope"}}}})
