"""The one Lightning ``Trainer`` factory of the project, and Ctrl-C that stays a Ctrl-C.

Lightning catches ``KeyboardInterrupt`` inside ``fit``/``test``/``predict`` and calls ``exit(1)``;
:func:`call_trainer` turns that back into ``KeyboardInterrupt`` so the CLI layer exits with 130
and says what finished work is kept. The runtime (accelerator, devices, num_nodes, strategy) comes
from the command line and never changes a stage's results or its hash.
"""

from __future__ import annotations

import logging
import signal
import warnings
from typing import Any, Callable, Mapping, TypeVar

from eca_core.runner.runtime import Runtime

R = TypeVar("R")

_QUIET = (".*LeafSpec.*", ".*no `val_dataloader`.*", ".*does not have many workers.*", ".*litlogger.*",
          ".*smaller than the logging interval.*", ".*sync_dist.*", ".*GPU available but not used.*",
          ".*tensorboardX.*", ".*`isinstance.*treespec.*")


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners and known-harmless warnings (runs make many small fits)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for msg in _QUIET:
        warnings.filterwarnings("ignore", message=msg)


def make_trainer(runtime: Runtime | Mapping[str, Any] | None = None, **kwargs: Any):
    """``lightning.Trainer`` with the command line's :class:`~eca_core.runner.runtime.Runtime` and quiet defaults.

    ``kwargs`` are Trainer arguments of the stage (epochs, callbacks, precision, ...); they win over
    the defaults here (no logger, no model summary, no sanity validation).
    """
    import lightning as L

    quiet_lightning()
    args: dict[str, Any] = dict(
        **Runtime.of(runtime).trainer_kwargs(), logger=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=False, enable_progress_bar=False,
    )
    callbacks = kwargs.get("callbacks") or []
    if any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks):
        args["enable_checkpointing"] = True
    args.update(kwargs)
    return L.Trainer(**args)


def call_trainer(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run ``trainer.fit/test/predict(...)``; a Ctrl-C inside it is re-raised as ``KeyboardInterrupt``."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return fn(*args, **kwargs)
    except SystemExit as exc:
        trainer = getattr(fn, "__self__", None)
        if getattr(trainer, "interrupted", False):  # Lightning's exit(1) after catching Ctrl-C
            raise KeyboardInterrupt from exc
        raise
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) != handler:
            try:
                signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT while it shuts down
            except ValueError:
                pass
