"""Command-line layer: lazy sub-command dispatch, one-line errors, Ctrl-C = 130, flags generated from config dataclasses.

A command module exposes ``configure_parser(parser)`` and ``main(args) -> int | None``; a stage's
command is :class:`StageCommand`, whose flags come from the stage's config dataclass (as litgpt
does): ``--epochs 5``, ``--model.hidden 64``, plus ``--config FILE`` and ``--set KEY=VALUE``. All
errors a user can fix (:class:`~eca_core.errors.ECAError`, ``ValueError``, ``OSError``) are caught
once here and printed as one line ``PROG CMD: error: ...`` with exit code 2; ``--debug`` or
``ECA_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eca_core.runner.config import from_dict, iter_fields, parse_yaml, read_yaml, set_dotted
from eca_core.errors import ConfigError, ECAError
from eca_core.runner.runtime import Runtime

CORE_COMMANDS = {
    "run": ("eca_core.runner.cli:RUN_COMMAND", "run a pipeline YAML (stages skipped when unchanged)"),
    "diagnose": ("eca_core.diagnostics", "homogeneity diagnostics and the Theorem 2.2 bound for sets in .npz/.h5"),
    "synthetic": ("eca_core.synthetic", "the paper's synthetic benchmark: ECA vs softmax at four homogeneity levels"),
}
USER_ERRORS = (ECAError, ValueError, OSError, KeyError)


def lazy_cli(prog: str, description: str, commands: dict[str, tuple[str, str]], argv: Sequence[str] | None = None) -> int:
    """Dispatch ``prog COMMAND ...`` to ``commands[COMMAND] = (module, help)``; errors handled once here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ECA_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    width = max(len(c) for c in commands)
    epilog = ("commands:\n" + "\n".join(f"  {c:<{width}}  {h}" for c, (_, h) in commands.items())
              + "\n\nevery command: --debug (or ECA_DEBUG=1) shows tracebacks instead of one-line errors")
    top = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("command", choices=list(commands), metavar="COMMAND", help="one of: " + ", ".join(commands))
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    ns = top.parse_args(argv[:1])
    module_name, help_text = commands[ns.command]
    name = f"{prog} {ns.command}"
    try:
        mod_name, _, attr = module_name.partition(":")
        module = importlib.import_module(mod_name)
        module = getattr(module, attr) if attr else module  # a StageCommand declared in a light module, or a module
        parser = argparse.ArgumentParser(prog=name, description=help_text, allow_abbrev=False,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure_parser(parser)
        args = parser.parse_args(argv[1:])
        code = module.main(args)
    except KeyboardInterrupt:
        if _secondary_rank():
            return 130
        print(f"\n{name}: interrupted; finished items are kept, the item in flight was discarded "
              f"(run the same command again to resume)", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if _secondary_rank():  # rank 0 reports it ("rank k failed: ...")
            return 2
        if debug:
            traceback.print_exc()
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless --debug
        if _secondary_rank() and not debug:
            return 1
        if debug:
            traceback.print_exc()
        print(f"{name}: internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    return int(code or 0)


def _secondary_rank() -> bool:
    from eca_core.runner import distributed

    return distributed.rank() > 0


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (KeyError's quotes removed)."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(msg):
        msg = f"{exc.filename}: {msg}"
    return " ".join(str(msg).split()) or type(exc).__name__


# ----------------------------------------------------------------------------------------- config flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = (),
                         positional: str | None = None) -> None:
    """One flag per leaf field of dataclass ``cls`` (nested: ``--model.hidden``), help from the field comments.

    Values are parsed as YAML and checked by :func:`~eca_core.runner.config.from_dict`, so the dataclass
    stays the one source of truth for names, types and defaults.
    """
    parser.add_argument("--config", type=Path, default=None,
                        help=f"YAML with {cls.__name__} keys: a flat mapping, or a pipeline YAML (its stages.<stage>)")
    parser.add_argument("--set", dest="cfg_set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, dotted for nested ones (value parsed as YAML); repeatable")
    g = parser.add_argument_group(f"{cls.__name__} (defaults in brackets)")
    for name, tp, default, doc in iter_fields(cls):
        if name in exclude:
            continue
        shown = "none" if default is None else default
        help_text = f"{doc} [{shown}]" if doc else f"[{shown}]"
        help_text = help_text.replace("%", "%%")
        if name == positional:
            parser.add_argument(f"cfg:{name}", metavar=name.upper(), nargs="?", default=argparse.SUPPRESS, help=help_text)
            continue
        kind = _kind(tp)
        if kind == "bool":
            g.add_argument(_flag(name), dest=f"cfg:{name}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        elif kind == "list":
            g.add_argument(_flag(name), dest=f"cfg:{name}", nargs="*", default=argparse.SUPPRESS, metavar="V", help=help_text)
        else:
            choices = list(typing.get_args(tp)) if typing.get_origin(tp) is typing.Literal else None
            g.add_argument(_flag(name), dest=f"cfg:{name}", default=argparse.SUPPRESS, choices=choices,
                           metavar=None if choices else _metavar(tp, kind), help=help_text)


def _kind(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if tp is bool:
        return "bool"
    if typing.get_origin(tp) in (list, tuple):
        return "list"
    if typing.get_origin(tp) is dict:
        return "yaml"
    if tp in (str, Path) or (typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
        return "text"
    return "value"


def _metavar(tp: Any, kind: str) -> str:
    names = {int: "INT", float: "FLOAT", str: "STR", Path: "PATH"}
    for t in (tp, *typing.get_args(tp)):
        if t in names:
            return names[t]
    return "YAML" if kind == "yaml" else "VALUE"


def _list_inner(tp: Any) -> Any:
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) in (list, tuple):
            return (typing.get_args(t) or (Any,))[0]
    return Any


def _scalar(text: str, tp: Any) -> Any:
    return text if _kind(tp) == "text" else parse_yaml(text, f"value {text!r}")


def config_params(cls: type, args: argparse.Namespace, section: str | None = None) -> dict[str, Any]:
    """Parameters from ``--config`` (flat, or a pipeline YAML's ``stages.<section>``), then ``--set``, then flags."""
    from eca_core.runner.pipeline import expand_env

    params: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        data = read_yaml(args.config) or {}
        if isinstance(data, Mapping) and "stages" in data and section is not None:
            data = (data.get("stages") or {}).get(section) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{args.config}: expected a mapping of {cls.__name__} keys")
        params = expand_env(dict(data), str(args.config))
    for item in getattr(args, "cfg_set", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        set_dotted(params, key, parse_yaml(value, f"--set {item!r}"))
    types_ = {name: tp for name, tp, _, _ in iter_fields(cls)}
    for dest, value in vars(args).items():
        if not dest.startswith("cfg:"):
            continue
        name = dest[4:]
        tp = types_[name]
        if isinstance(value, list):
            value = [_scalar(v, _list_inner(tp)) for v in value]
        elif isinstance(value, str):
            value = _scalar(value, tp)
        set_dotted(params, name, value)
    return params


def config_from_args(cls: type, args: argparse.Namespace, section: str | None = None, where: str = "command line") -> Any:
    """The typed config of a command: ``--config``, ``--set`` and generated flags, validated by ``from_dict``."""
    return from_dict(cls, config_params(cls, args, section), str(getattr(args, "config", None) or where))


def report_paths(*keys: str) -> Callable[[dict[str, Any], argparse.Namespace], None]:
    """A :class:`StageCommand` report printing ``key: path`` for each output its stage's summary names."""
    def report(summary: dict[str, Any], args: argparse.Namespace) -> None:
        print("  ".join(f"{key}: {summary[key]}" for key in keys))

    return report


class StageCommand:
    """The command-line face of one :class:`~eca_core.runner.pipeline.Stage`: generated flags, lock, temp cleanup, run.

    ``--out DIR`` is the stage's output folder; each stage it reads gets ``--<stage> DIR``.
    """

    def __init__(self, stage: Any, out_help: str = "output folder", positional: str | None = None,
                 needs_help: Mapping[str, str] | None = None, needs_flags: Mapping[str, str] | None = None,
                 exclude: Sequence[str] = (),
                 report: Callable[[dict[str, Any], argparse.Namespace], None] | str | None = None) -> None:
        self.ref, self.out_help, self.positional = stage, out_help, positional
        self.needs_help, self.exclude, self.report = dict(needs_help or {}), tuple(exclude), report
        self.needs_flags = dict(needs_flags or {})

    @property
    def stage(self):
        from eca_core.runner.pipeline import resolve_stage

        return resolve_stage(self.ref)

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        stage = self.stage
        parser.description = (parser.description or stage.description)
        parser.add_argument("--out", type=Path, required=True, help=self.out_help)
        for need in (*stage.needs, *stage.optional):
            parser.add_argument(self.needs_flags.get(need, _flag(need)), dest=f"need:{need}", type=Path,
                                required=need in stage.needs, default=None, metavar="DIR",
                                help=self.needs_help.get(need, f"output folder of the {need} stage"))
        # num_workers is the runtime flag's (it overrides the config's value and never enters the key)
        add_config_arguments(parser, stage.config, exclude=(*self.exclude, "num_workers"), positional=self.positional)
        Runtime.add_arguments(parser)

    def main(self, args: argparse.Namespace) -> int:
        from eca_core.runner import distributed
        from eca_core.runner.pipeline import StageContext, run_on_ranks
        from eca_core.runner.resume import RunLock, clean_temp_files

        stage = self.stage
        cfg = config_from_args(stage.config, args, section=stage.name, where=f"{stage.name} options")
        upstream = {need: Path(getattr(args, f"need:{need}")) for need in (*stage.needs, *stage.optional)
                    if getattr(args, f"need:{need}", None) is not None}
        for need, path in upstream.items():
            if not path.is_dir():
                flag = self.needs_flags.get(need, _flag(need))
                raise ConfigError(f"{path}: not a folder ({flag} expects the {need} stage's output folder)")
        out = Path(args.out)
        runtime = Runtime.from_args(args)
        distributed.launch(runtime)
        with RunLock(out):
            if distributed.is_main():
                removed = clean_temp_files(out)
                if removed:
                    print(f"removed {len(removed)} temp file(s) left by an interrupted run in {out}", file=sys.stderr)
            distributed.barrier()
            ctx = StageContext(stage.name, stage.name, out, cfg, runtime, upstream)
            summary = dict(run_on_ranks(stage, ctx) or {})
            distributed.barrier()
        if self.report is not None and distributed.is_main():
            from eca_core.runner.pipeline import resolve_callable

            resolve_callable(self.report)(summary, args)
        return 0


class RunCommand:
    """``run`` of every CLI (``eca run``, ``eca-bio run``, ...): run a pipeline YAML and print where its outputs are."""

    def configure_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pipeline", type=Path, help="pipeline YAML (see pipelines/)")
        parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default: the YAML's run_dir)")
        parser.add_argument("--from", dest="from_stage", default=None, help="force a re-run from this stage on")
        parser.add_argument("--until", default=None, help="stop after this stage")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                            help="override a stage parameter (value parsed as YAML); repeatable")
        Runtime.add_arguments(parser)

    def main(self, args: argparse.Namespace) -> int:
        from eca_core.runner.pipeline import PipelineSpec, run_pipeline

        spec = PipelineSpec.from_yaml(args.pipeline).with_overrides(args.overrides)
        run_dir = Path(args.run_dir or spec.run_dir)
        run_pipeline(spec, run_dir, args.from_stage, args.until, Runtime.from_args(args))
        print(f"run directory: {run_dir.resolve()}")
        return 0


RUN_COMMAND = RunCommand()


def main(argv: Sequence[str] | None = None) -> int:
    """``eca``: the core commands."""
    return lazy_cli("eca", "Extrapolative Correlation Attention: pipelines, diagnostics, synthetic benchmark.", CORE_COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
