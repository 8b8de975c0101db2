"""Command-line entry points. ``lazy_cli`` builds a sub-command CLI that imports a command's module only when run.

A command module exposes ``configure_parser(parser)`` and ``main(args) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

CORE_COMMANDS = {
    "run": ("eca_core.pipeline", "run a pipeline YAML (stages skipped when unchanged)"),
    "diagnose": ("eca_core.diagnostics", "homogeneity diagnostics and the Theorem 2.2 bound for sets in .npz/.h5"),
    "synthetic": ("eca_core.synthetic", "the paper's synthetic benchmark: ECA vs softmax at four homogeneity levels"),
}


def lazy_cli(prog: str, description: str, commands: dict[str, tuple[str, str]], argv: Sequence[str] | None = None) -> int:
    """Dispatch ``prog COMMAND ...`` to ``commands[COMMAND] = (module, help)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(len(c) for c in commands)
    epilog = "commands:\n" + "\n".join(f"  {c:<{width}}  {h}" for c, (_, h) in commands.items())
    top = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("command", choices=list(commands), metavar="COMMAND", help="one of: " + ", ".join(commands))
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    ns = top.parse_args(argv[:1])
    module_name, help_text = commands[ns.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"{prog} {ns.command}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.configure_parser(parser)
    args = parser.parse_args(argv[1:])
    try:
        code = module.main(args)
    except KeyboardInterrupt:
        print(f"{prog} {ns.command}: interrupted; finished work is kept, partial outputs were removed", file=sys.stderr)
        return 130
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``eca``: the core commands."""
    return lazy_cli("eca", "Extrapolative Correlation Attention: pipelines, diagnostics, synthetic benchmark.", CORE_COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
