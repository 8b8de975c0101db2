"""A tiny stages module with typed configs for the runner and CLI tests (importable in subprocesses too)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from eca_core.runner.config import check
from eca_core.io import atomic_path
from eca_core.runner.pipeline import Stage, StageContext

CALLS: list[str] = []


@dataclass
class MakeConfig:
    input: str = ""  # a text file holding an integer
    factor: int = 1  # multiplies the input
    sleep: float = 0.0  # seconds to wait after writing (for interrupt tests)
    fail_rank: int = -1  # this rank raises (for the distributed tests)
    kill_rank: int = -1  # this rank is SIGKILLed (for the distributed tests)

    def __post_init__(self) -> None:
        check(self, factor=">=1", sleep=">=0")


@dataclass
class ScaleConfig:
    lr: float = 1e-3  # a float, to check that YAML's 2e-3 is a number
    epochs: int = 3  # at least 1

    def __post_init__(self) -> None:
        check(self, lr=">0", epochs=">=1")


def _make(ctx: StageContext) -> dict:
    from eca_core.runner import distributed

    CALLS.append("make")
    if distributed.rank() == ctx.config.fail_rank:
        raise ValueError(f"rank {ctx.config.fail_rank} cannot read its shard")
    if distributed.rank() == ctx.config.kill_rank:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    value = int(Path(ctx.config.input).read_text()) * ctx.config.factor
    with atomic_path(ctx.out_dir / "value.txt") as tmp:
        tmp.write_text(str(value))
    if ctx.config.sleep:
        print("make: waiting", flush=True)
        time.sleep(ctx.config.sleep)
    return {"value": value}


def _scale(ctx: StageContext) -> dict:
    CALLS.append("scale")
    value = int((ctx.stage_dir("make") / "value.txt").read_text())
    with atomic_path(ctx.out_dir / "scaled.txt") as tmp:
        tmp.write_text(f"{value * ctx.config.epochs} {ctx.config.lr!r}")
    return {"lr": ctx.config.lr}


STAGES = {
    "make": Stage("make", _make, config=MakeConfig, inputs=lambda ctx: [Path(ctx.config.input)]),
    "scale": Stage("scale", _scale, config=ScaleConfig, needs=("make",)),
}
