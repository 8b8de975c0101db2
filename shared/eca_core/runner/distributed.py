"""Several processes, one run: Lightning's launcher starts the ranks, this module keeps them in step.

A pipeline (or one stage's command) calls :func:`launch` first. With one device it does nothing.
With several (``--devices 2 --strategy ddp``, ``--accelerator gpu --devices 4``, or a job started by
``torchrun`` / SLURM) Lightning Fabric starts the local ranks (re-running the same command, or joining
the ranks the cluster started) and the process group; every Lightning ``Trainer`` created later
joins that group instead of launching again. Then:

- every rank runs each stage's distributed part: embedding shards tiles over ranks, training
  spreads independent items (fold × method × transform, setting × seed) over ranks, each item on
  one device of its rank, so its validation and test metrics are those of a single-process run;
- only rank 0 writes markers, manifests, reports, ``.h5ad`` files and plots;
- ranks meet at :func:`barrier` between stages and after each stage's writes, and
  :func:`raise_if_any_failed` makes all ranks stop with the error of the rank that failed.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
from typing import Any, Callable, Mapping, Sequence, TypeVar

from eca_core.errors import ECAError
from eca_core.runner.runtime import Runtime

T = TypeVar("T")


class RankError(ECAError):
    """Another rank failed; this rank stops with its message."""


def _dist():
    if "torch.distributed" not in sys.modules:  # no process group can exist yet: answer without importing torch
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    d = _dist()
    return d.get_rank() if d else int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """Number of processes in the run (1 without a process group)."""
    d = _dist()
    return d.get_world_size() if d else 1


def local_rank() -> int:
    """Rank of this process on its node (its device index)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True on global rank 0, the only rank that writes shared outputs."""
    return rank() == 0


def launch(runtime: Runtime | Mapping[str, Any] | None) -> int:
    """Start the ranks the runtime asks for and join their process group; returns the world size."""
    if _dist() is not None:
        return world_size()
    runtime = Runtime.of(runtime)
    if runtime.single_cpu_process() and "WORLD_SIZE" not in os.environ:
        return 1  # one CPU process: nothing to start
    from lightning.fabric import Fabric

    from eca_core.runner.trainer import quiet_lightning

    quiet_lightning()
    _say_when_a_rank_dies()
    fabric = Fabric(**runtime.trainer_kwargs())
    if fabric.world_size <= 1:
        return 1
    fabric.launch()
    atexit.register(_shutdown)
    return world_size()


class _RankDeathHandler(logging.Handler):
    """Lightning's launcher SIGKILLs every rank when one dies (its message is an INFO log): say it in one line first."""

    _PATTERN = re.compile(r"\[rank: (\d+)\] Child process with PID (\d+) terminated with code (-?\d+)")

    def emit(self, record: logging.LogRecord) -> None:
        m = self._PATTERN.search(record.getMessage())
        if m:
            rank, pid, code = m.groups()
            print(f"error: rank {rank} (pid {pid}) ended with code {code}"
                  + (" (killed: out of memory, or a signal)" if code in ("-9", "137") else "")
                  + "; every rank is stopped now, finished work is kept (run the same command again to resume)",
                  file=sys.stderr, flush=True)


def _say_when_a_rank_dies() -> None:
    log = logging.getLogger("lightning.fabric.strategies.launchers.subprocess_script")
    if not any(isinstance(h, _RankDeathHandler) for h in log.handlers):
        log.addHandler(_RankDeathHandler(logging.INFO))
    log.setLevel(logging.INFO)


def _shutdown() -> None:
    """Tear the process group down before the interpreter exits (gloo aborts on exit otherwise)."""
    d = _dist()
    if d is not None:
        try:
            d.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def on_this_rank(runtime: Runtime | Mapping[str, Any] | None) -> Runtime:
    """The runtime for a Trainer that runs on this rank's own device only (one item per rank)."""
    runtime = Runtime.of(runtime)
    if world_size() <= 1:
        return runtime
    return runtime.on_device(runtime.resolved_accelerator(), local_rank())


def torch_device(runtime: Runtime | Mapping[str, Any] | None) -> Any:
    """This rank's ``torch.device``: its GPU for ``--accelerator gpu`` (or ``auto`` with CUDA visible), else the CPU."""
    import torch

    runtime = Runtime.of(runtime)
    accelerator = runtime.resolved_accelerator()
    if accelerator not in ("gpu", "cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ECAError(f"--accelerator {accelerator}: no CUDA device is visible")
    devices = runtime.device_list
    index = devices[0] if isinstance(devices, list) and devices else local_rank() % torch.cuda.device_count()
    return torch.device("cuda", int(index))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (item i goes to rank i mod world size)."""
    r, w = rank(), world_size()
    return [item for i, item in enumerate(items) if i % w == r]


def _lost(exc: RuntimeError) -> RankError:
    """A collective that failed because another process is gone (killed, out of memory): one plain line."""
    reason = " ".join(str(exc).split("]", 1)[-1].split()).split(". ")[0][:160]  # gloo: "[file:line] Read error ...". ...
    return RankError(f"another rank stopped without a word (killed, or out of memory?): {reason}; finished work is kept "
                     f"(run the same command again to resume)")


def barrier() -> None:
    """Wait until every rank gets here."""
    d = _dist()
    if d is not None:
        try:
            d.barrier()
        except RuntimeError as exc:
            raise _lost(exc) from exc


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object made by this program)."""
    d = _dist()
    if d is None:
        return obj
    box = [obj if rank() == 0 else None]
    try:
        d.broadcast_object_list(box, src=0)
    except RuntimeError as exc:
        raise _lost(exc) from exc
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    d = _dist()
    if d is None:
        return [obj]
    out: list[Any] = [None] * world_size()
    try:
        d.all_gather_object(out, obj)
    except RuntimeError as exc:
        raise _lost(exc) from exc
    return out


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 alone; every rank gets its result, or stops with its error."""
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks
            error = exc
    raise_if_any_failed(error)
    return broadcast(result)


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective: if any rank failed, every rank raises (the failing rank its own error, the others a RankError)."""
    if _dist() is None:
        if error is not None:
            raise error
        return
    messages = all_gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        r, m = failed[0]
        raise RankError(f"rank {r} failed: {m}")
