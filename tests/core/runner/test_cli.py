"""The CLI contract: whole pipeline validated first, one-line errors (exit 2), --debug, Ctrl-C = 130, outputs checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eca_core.runner.cli import main as eca_main
from tests.core import stage_fixtures

ROOT = Path(__file__).resolve().parents[3]


def _pipeline(tmp_path: Path, make: str = "", scale: str = "") -> Path:
    (tmp_path / "input.txt").write_text("21")
    path = tmp_path / "p.yaml"
    path.write_text(f"name: t\nstages_module: tests.core.stage_fixtures\nrun_dir: {tmp_path / 'run'}\nstages:\n"
                    f"  make: {{input: {tmp_path / 'input.txt'}{make}}}\n  scale: {{lr: 2e-3{scale}}}\n")
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = eca_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_yaml_numbers_and_a_clean_run(tmp_path, capsys):
    stage_fixtures.CALLS.clear()
    code, out, _ = _run(["run", str(_pipeline(tmp_path))], capsys)
    assert code == 0 and stage_fixtures.CALLS == ["make", "scale"]
    assert (tmp_path / "run/scale/scaled.txt").read_text() == "63 0.002"  # 2e-3 is a number, not the string '2e-3'
    marker = json.loads((tmp_path / "run/make.done.json").read_text())
    assert marker["outputs"]["value.txt"]["size"] == 2 and marker["params"]["factor"] == 1


@pytest.mark.parametrize("make, scale, argv_extra, message", [
    ("", ", epochz: 3", [], r"stages.scale: unknown key\(s\) \['epochz'\] \('epochz': did you mean 'epochs'\?\)"),
    ("", ", epochs: abc", [], r"stages.scale.epochs: expected an integer, got 'abc'"),
    ("", ", epochs: 0", [], r"stages.scale: epochs must be >=1, got 0"),
    ("", "", ["--set", "scale.lr=-1"], r"stages.scale: lr must be >0, got -1.0"),
    ("", "", ["--set", "scal.lr=1"], r"--set 'scal.lr=1': no stage 'scal'"),
    ("", "", ["--set", "nodot"], r"--set 'nodot': expected STAGE.KEY=VALUE"),
    (", factor: \"${ECA_TEST_UNSET_VAR}\"", "", [], r"environment variable ECA_TEST_UNSET_VAR is not set"),
])
def test_bad_pipelines_fail_in_one_line_before_any_stage_runs(tmp_path, capsys, make, scale, argv_extra, message):
    import re

    stage_fixtures.CALLS.clear()
    code, _, err = _run(["run", str(_pipeline(tmp_path, make, scale)), *argv_extra], capsys)
    assert code == 2 and stage_fixtures.CALLS == []  # the typo under the *second* stage stops the first one too
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("eca run: error: ") and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, _, err = _run(["run", str(_pipeline(tmp_path, scale=", epochs: 0")), "--debug"], capsys)
    assert code == 2 and "Traceback" in err and err.rstrip().endswith("epochs must be >=1, got 0")


def test_output_paths_that_cannot_be_used(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(["run", str(_pipeline(tmp_path)), "--run-dir", str(tmp_path / "afile")], capsys)
    assert code == 2 and "afile: output path exists and is not a directory" in err and err.count("\n") == 1
    code, _, err = _run(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml: no such pipeline file" in err


def test_changed_or_deleted_outputs_and_inputs_are_never_up_to_date(tmp_path, capsys):
    pipe = _pipeline(tmp_path)
    assert _run(["run", str(pipe)], capsys)[0] == 0
    stage_fixtures.CALLS.clear()
    code, out, _ = _run(["run", str(pipe)], capsys)
    assert code == 0 and stage_fixtures.CALLS == [] and out.count("up to date") == 2

    (tmp_path / "run/make/value.txt").unlink()  # a deleted output: make runs again; its output is identical, so scale does not
    code, out, _ = _run(["run", str(pipe)], capsys)
    assert stage_fixtures.CALLS == ["make"] and "value.txt: missing" in out

    stage_fixtures.CALLS.clear()
    (tmp_path / "run/scale/scaled.txt").write_text("99 9")  # an edited output
    _run(["run", str(pipe)], capsys)
    assert stage_fixtures.CALLS == ["scale"] and (tmp_path / "run/scale/scaled.txt").read_text() == "63 0.002"

    stage_fixtures.CALLS.clear()
    (tmp_path / "input.txt").write_text("22")  # same size, new content: both stages again
    _run(["run", str(pipe)], capsys)
    assert stage_fixtures.CALLS == ["make", "scale"] and (tmp_path / "run/scale/scaled.txt").read_text() == "66 0.002"


def test_ctrl_c_exits_130_and_keeps_finished_stages(tmp_path):
    pipe = _pipeline(tmp_path, make=", sleep: 30")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "eca_core.runner.cli", "run", str(pipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job ignores SIGINT
    try:
        line = ""
        deadline = time.time() + 120
        while "make: waiting" not in line and time.time() < deadline:
            line = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "eca run: interrupted; finished items are kept" in err and "Traceback" not in err
    assert not (tmp_path / "run/make.done.json").exists()  # the interrupted stage is not marked done
    assert not (tmp_path / "run/.eca.lock").exists()  # and the lock is released


def test_lightning_ctrl_c_is_a_keyboard_interrupt():
    """Lightning catches Ctrl-C inside fit() and calls exit(1); call_trainer turns that back into KeyboardInterrupt."""
    import lightning as L
    import torch

    from eca_core.runner.trainer import call_trainer, make_trainer

    class Interrupted(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            raise KeyboardInterrupt

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=2)
    trainer = make_trainer({"accelerator": "cpu", "devices": 1}, max_epochs=1)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        call_trainer(trainer.fit, Interrupted(), data)
    assert signal.getsignal(signal.SIGINT) == handler  # Lightning's SIG_IGN is undone
