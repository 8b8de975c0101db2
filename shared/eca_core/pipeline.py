"""Staged-pipeline runner: YAML-defined stages, a run directory, hashed ``<stage>.done.json`` markers.

A pipeline YAML names the module that registers its stages and the parameters of each stage::

    name: bio_demo
    stages_module: eca_bio.stages      # exposes STAGES: dict[str, Stage]
    run_dir: runs/bio_demo
    stages:
      preprocess: {data_dir: "${HER2ST:-../shared/data/her2st}", patch_um: 112}
      train: {epochs: 5}
      evaluate: {}

Stages run in the order listed. Each stage writes into ``run_dir/<stage>/`` (atomically, per item)
and, when it finishes, ``run_dir/<stage>.done.json`` records the hash of its parameters, its
external input files and the hashes of all earlier stages. A stage whose hash is unchanged is
skipped; ``from_stage`` forces a re-run from that stage on. Runtime options (accelerator, devices,
workers, ...) are passed through ``StageContext.options`` and are not part of the hash.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from eca_core.io import write_json_atomic

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LARGE_FILE = 64 * 1024 * 1024
_EDGE_BYTES = 1024 * 1024


class PipelineError(RuntimeError):
    """A pipeline definition or a stage failed in a way the user must fix."""


@dataclass
class StageContext:
    """What a stage sees: its parameters, its output folder and read access to earlier stages."""

    pipeline: str
    stage: str
    run_dir: Path
    params: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        """This stage's own output folder (created on demand)."""
        path = self.run_dir / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stage_dir(self, name: str) -> Path:
        """Output folder of an earlier stage; an error if that stage has not completed."""
        if not (self.run_dir / f"{name}.done.json").exists():
            raise PipelineError(f"stage '{self.stage}' needs stage '{name}' to have run in {self.run_dir}")
        return self.run_dir / name


@dataclass
class Stage:
    """A named unit of work. ``run`` may return a JSON-able summary stored in the done marker.

    ``inputs`` lists external files/folders (outside the run dir) whose content is part of the hash.
    """

    name: str
    run: Callable[[StageContext], Mapping[str, Any] | None]
    inputs: Callable[[StageContext], list[Path]] | None = None
    description: str = ""


@dataclass
class PipelineSpec:
    """A parsed pipeline YAML."""

    name: str
    stages_module: str
    run_dir: Path
    stages: dict[str, dict[str, Any]]
    source: Path | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineSpec":
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path}: no such pipeline file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PipelineError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, source: Path | None = None) -> "PipelineSpec":
        where = str(source) if source else "pipeline"
        if not isinstance(data, dict):
            raise PipelineError(f"{where}: expected a mapping at top level")
        missing = [k for k in ("name", "stages_module", "stages") if k not in data]
        if missing:
            raise PipelineError(f"{where}: missing key(s) {missing}")
        unknown = sorted(set(data) - {"name", "stages_module", "stages", "run_dir", "description"})
        if unknown:
            raise PipelineError(f"{where}: unknown key(s) {unknown}")
        stages = data["stages"]
        if not isinstance(stages, dict) or not stages:
            raise PipelineError(f"{where}: 'stages' must be a non-empty mapping of stage name -> parameters")
        parsed = {}
        for name, params in stages.items():
            if params is not None and not isinstance(params, dict):
                raise PipelineError(f"{where}: parameters of stage '{name}' must be a mapping")
            parsed[str(name)] = expand_env(dict(params or {}))
        run_dir = Path(expand_env(data.get("run_dir", f"runs/{data['name']}")))
        return cls(str(data["name"]), str(data["stages_module"]), run_dir, parsed, source)

    def with_overrides(self, overrides: list[str]) -> "PipelineSpec":
        """Apply ``stage.key=value`` overrides (value parsed as YAML) and return a new spec."""
        spec = copy.deepcopy(self)
        for item in overrides:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise PipelineError(f"override {item!r}: expected STAGE.KEY=VALUE")
            lhs, value = item.split("=", 1)
            stage, key = lhs.split(".", 1)
            if stage not in spec.stages:
                raise PipelineError(f"override {item!r}: no stage '{stage}' in {list(spec.stages)}")
            target = spec.stages[stage]
            *parents, leaf = key.split(".")
            for p in parents:
                target = target.setdefault(p, {})
            target[leaf] = yaml.safe_load(value)
        return spec


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in strings, recursively through lists and dicts."""
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise PipelineError(f"environment variable {var} is not set and has no default in {value!r}")
        return _ENV_PATTERN.sub(repl, value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def fingerprint(path: Path) -> str:
    """Content fingerprint of a file or folder (large files: size + first and last MiB)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(child.relative_to(path)).encode())
            h.update(fingerprint(child).encode())
        return h.hexdigest()
    if not path.exists():
        raise PipelineError(f"input {path} does not exist")
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _LARGE_FILE:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(_EDGE_BYTES))
            fh.seek(size - _EDGE_BYTES)
            h.update(fh.read(_EDGE_BYTES))
    return h.hexdigest()


def load_stages(module: str) -> dict[str, Stage]:
    """Import ``module`` and return its ``STAGES`` registry.

    Registry values are ``Stage`` objects or ``"package.module:ATTR"`` strings resolved here, so a
    domain package lists its stages without importing every stage's dependencies up front.
    """
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PipelineError(f"cannot import stages module '{module}': {exc}") from exc
    stages = getattr(mod, "STAGES", None)
    if not isinstance(stages, dict):
        raise PipelineError(f"module '{module}' has no STAGES dict")
    return {name: _resolve_stage(name, ref) for name, ref in stages.items()}


def _resolve_stage(name: str, ref: Stage | str) -> Stage:
    if isinstance(ref, Stage):
        return ref
    mod_name, _, attr = str(ref).partition(":")
    stage = getattr(importlib.import_module(mod_name), attr, None)
    if not isinstance(stage, Stage):
        raise PipelineError(f"stage '{name}': {ref} is not a Stage")
    return stage


def stage_hash(ctx: StageContext, stage: Stage, upstream: list[str]) -> tuple[str, dict[str, str]]:
    """Hash of a stage's parameters, its external inputs and the hashes of the stages before it."""
    inputs = {str(p): fingerprint(Path(p)) for p in (stage.inputs(ctx) if stage.inputs else [])}
    payload = json.dumps(
        {"stage": ctx.stage, "params": ctx.params, "inputs": inputs, "upstream": upstream},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest(), inputs


def read_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """The done marker of ``stage`` in ``run_dir``, or None."""
    path = Path(run_dir) / f"{stage}.done.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def run_pipeline(
    spec: PipelineSpec,
    run_dir: Path | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run the stages of ``spec`` in order, skipping those whose hash is unchanged.

    Returns the done records of all stages that ran or were skipped.
    """
    registry = load_stages(spec.stages_module)
    names = list(spec.stages)
    for name in names:
        if name not in registry:
            raise PipelineError(f"pipeline '{spec.name}': unknown stage '{name}'; {spec.stages_module} has {sorted(registry)}")
    for flag, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in names:
            raise PipelineError(f"{flag} {value}: no such stage in {names}")
    run_dir = Path(run_dir or spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    forced = names.index(from_stage) if from_stage else len(names)
    last = names.index(until) if until else len(names) - 1
    upstream: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names[: last + 1]):
        stage = registry[name]
        ctx = StageContext(spec.name, name, run_dir, spec.stages[name], dict(options or {}))
        digest, inputs = stage_hash(ctx, stage, upstream)
        done = read_done(run_dir, name)
        if i < forced and done is not None and done.get("hash") == digest:
            log(f"[{spec.name}] {name}: up to date, skipped")
            records[name] = done
            upstream.append(digest)
            continue
        (run_dir / f"{name}.done.json").unlink(missing_ok=True)
        log(f"[{spec.name}] {name}: running")
        start = time.time()
        summary = stage.run(ctx)
        record = {
            "stage": name,
            "pipeline": spec.name,
            "hash": digest,
            "params": ctx.params,
            "inputs": inputs,
            "upstream": upstream,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
            "duration_s": round(time.time() - start, 3),
            "summary": dict(summary or {}),
        }
        write_json_atomic(run_dir / f"{name}.done.json", record)
        log(f"[{spec.name}] {name}: done in {record['duration_s']:.1f}s")
        records[name] = record
        upstream.append(digest)
    return records


def add_run_arguments(parser: Any) -> None:
    """Arguments shared by every ``run`` command (``eca run``, ``eca-bio run``, ``eca-msa run``)."""
    parser.add_argument("pipeline", type=Path, help="pipeline YAML (see pipelines/)")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default: the YAML's run_dir)")
    parser.add_argument("--from", dest="from_stage", default=None, help="force a re-run from this stage on")
    parser.add_argument("--until", default=None, help="stop after this stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a stage parameter (value parsed as YAML); repeatable")
    add_runtime_arguments(parser)


def add_runtime_arguments(parser: Any) -> None:
    """Lightning scaling options; they never change a stage's hash."""
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu, gpu, auto, ...")
    parser.add_argument("--devices", default="auto", help="Lightning devices: auto, N, or a list")
    parser.add_argument("--num-nodes", type=int, default=1, help="Lightning num_nodes (multi-node jobs)")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ...")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: per stage)")


def runtime_options(args: Any) -> dict[str, Any]:
    """Collect the runtime options parsed by ``add_runtime_arguments``."""
    return {
        "accelerator": args.accelerator,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "strategy": args.strategy,
        "num_workers": args.num_workers,
    }


def run_from_args(args: Any) -> dict[str, dict[str, Any]]:
    """Entry point for the ``run`` sub-commands."""
    spec = PipelineSpec.from_yaml(args.pipeline).with_overrides(args.overrides)
    return run_pipeline(spec, args.run_dir, args.from_stage, args.until, runtime_options(args))


configure_parser = add_run_arguments


def main(args: Any) -> int:
    """``run`` sub-command: run the pipeline and print where its outputs are."""
    records = run_from_args(args)
    last = next(reversed(records.values()), None)
    if last is not None:
        print(f"run directory: {Path(args.run_dir or PipelineSpec.from_yaml(args.pipeline).run_dir).resolve()}")
    return 0
