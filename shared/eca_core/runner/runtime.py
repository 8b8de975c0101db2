"""How a stage runs, never what it computes: Lightning's accelerator, devices, nodes and strategy, and DataLoader
workers. One dataclass from the command line (``--accelerator`` ...) to the Trainer; never part of a stage's key.

Torch-free: the flags are built and parsed before torch or Lightning are imported.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class Runtime:
    """Lightning scaling options and DataLoader workers of one command."""

    accelerator: str = "auto"  # cpu, gpu, auto, ...
    devices: Any = "auto"  # auto, N, or a list of device indices
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, ...
    num_workers: int | None = None  # DataLoader workers; None: the stage's own setting

    @classmethod
    def of(cls, value: "Runtime | Mapping[str, Any] | None") -> "Runtime":
        """A Runtime from itself, a mapping of its fields (``None`` values keep the defaults) or nothing."""
        if isinstance(value, Runtime):
            return value
        given = {k: v for k, v in dict(value or {}).items() if v is not None}
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown runtime option(s) {unknown}; choose from {list(cls.__dataclass_fields__)}")
        return cls(**given)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The runtime flags of every command."""
        g = parser.add_argument_group("runtime (never part of a stage's key)")
        g.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu, gpu, auto, ... (default: auto)")
        g.add_argument("--devices", default="auto", help="Lightning devices: auto, N, or a list (default: auto)")
        g.add_argument("--num-nodes", type=int, default=1, help="Lightning num_nodes (multi-node jobs)")
        g.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ... (default: auto)")
        g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: per stage)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Runtime":
        """The runtime of parsed :meth:`add_arguments` flags."""
        return cls.of({k: getattr(args, k, None) for k in cls.__dataclass_fields__})

    @property
    def device_list(self) -> Any:
        """``devices`` as Lightning takes it: an int for "N", a list for "0,1", else as given."""
        text = str(self.devices)
        if text.isdigit():
            return int(text)
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return self.devices

    def resolved_accelerator(self) -> str:
        """The accelerator with ``auto`` decided: ``gpu`` when CUDA is available, else ``cpu``."""
        if self.accelerator != "auto":
            return str(self.accelerator)
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"

    def workers(self, stage_default: int) -> int:
        """DataLoader workers: the command line's, else the stage's own setting."""
        return stage_default if self.num_workers is None else int(self.num_workers)

    def single_cpu_process(self) -> bool:
        """One process on the CPU: nothing to launch."""
        return str(self.accelerator) == "cpu" and str(self.devices) in ("auto", "1") and int(self.num_nodes) == 1

    def on_device(self, accelerator: str, local_rank: int) -> "Runtime":
        """This runtime narrowed to one rank's own device (a Trainer per rank, one item each)."""
        devices = [local_rank] if accelerator in ("gpu", "cuda") else 1
        return replace(self, accelerator=accelerator, devices=devices, strategy="auto", num_nodes=1)

    def trainer_kwargs(self) -> dict[str, Any]:
        """``lightning.Trainer`` arguments of this runtime."""
        return {"accelerator": self.accelerator, "devices": self.device_list, "num_nodes": int(self.num_nodes),
                "strategy": self.strategy}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
