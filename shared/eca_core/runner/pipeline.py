"""The stage contract and the staged-pipeline runner.

A stage is a typed config dataclass plus a run function (:class:`Stage`). A pipeline YAML names the
module that registers its stages and the parameters of each::

    name: bio_demo
    stages_module: eca_bio.stages      # exposes STAGES: dict[str, Stage | "module:ATTR"]
    run_dir: runs/bio_demo
    stages:
      preprocess: {st_dir: "${HER2ST:-../shared/data/her2st}", patch_um: 112}
      train: {epochs: 5}
      evaluate: {}

Before any stage runs, every stage's parameters are parsed into its dataclass, so a typo under
``evaluate:`` fails in the first second, not after hours of preprocessing. The run directory is
locked (:class:`~eca_core.runner.resume.RunLock`). Each stage writes into ``run_dir/<stage>/`` and, when it
finishes, ``run_dir/<stage>.done.json`` records its key (parameters, the content hashes of its
external inputs, the output digests of the stages it reads) and its outputs (path, size, hash).
A stage is skipped only when its key is unchanged *and* its outputs are intact; otherwise its
stale temp files are removed and it runs again. The runtime (accelerator, devices, workers: ``eca_core.runner.runtime``)
never enters the key.
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

from eca_core.runner import distributed
from eca_core.runner.config import from_dict, parse_yaml, read_yaml, set_dotted, to_dict
from eca_core.errors import ConfigError
from eca_core.io import write_json_atomic
from eca_core.runner.runtime import Runtime
from eca_core.runner.resume import RunLock, check_outputs, clean_temp_files, content_hash, record_outputs

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MARKER_VERSION = 2


class PipelineError(ConfigError):
    """A pipeline definition or a stage's place in it is invalid."""


@dataclass
class StageContext:
    """What a stage sees: its typed config, its output folder, the folders of the stages it reads."""

    pipeline: str
    stage: str
    out_dir: Path
    config: Any = None                                   # the stage's config dataclass (the raw params without one)
    runtime: Runtime = field(default_factory=Runtime)    # how it runs (accelerator, devices, workers): never part of the key
    upstream: dict[str, Path] = field(default_factory=dict)
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def maybe_stage_dir(self, name: str) -> Path | None:
        """Output folder of an earlier stage if there is one, else None."""
        try:
            return self.stage_dir(name)
        except PipelineError:
            return None

    def stage_dir(self, name: str) -> Path:
        """Output folder of an earlier stage this stage reads; an error if it is not available."""
        path = self.upstream.get(name)
        if path is None and self.run_dir is not None and (self.run_dir / f"{name}.done.json").exists():
            path = self.run_dir / name
        if path is None or not Path(path).is_dir():
            raise PipelineError(f"stage '{self.stage}' needs the output of stage '{name}'"
                                + (f" in {self.run_dir}" if self.run_dir else f" (give --{name.replace('_', '-')} DIR)"))
        return Path(path)


@dataclass
class Stage:
    """A named unit of work: ``run(ctx)`` with ``ctx.config`` an instance of ``config``.

    ``inputs(ctx)`` lists external files/folders whose *content* is part of the stage key; ``needs``
    names the earlier stages whose outputs it reads (``optional``: read when present). ``run`` may
    return a JSON-able summary.
    """

    name: str
    run: Callable[[StageContext], Mapping[str, Any] | None] | str  # or "package.module:function", imported when it runs
    config: type | None = None
    inputs: Callable[[StageContext], list[Path]] | str | None = None
    needs: tuple[str, ...] = ()
    description: str = ""
    optional: tuple[str, ...] = ()  # earlier stages it reads when they are there (e.g. images for an export)
    main_only: bool = False  # runs on rank 0 alone (reports, small files); the other ranks wait for it

    def execute(self, ctx: StageContext) -> Mapping[str, Any] | None:
        """Run the stage (importing its code now when ``run`` is a reference: declarations stay light)."""
        return resolve_callable(self.run)(ctx)

    def input_paths(self, ctx: StageContext) -> list[Path]:
        """The external inputs whose content enters the stage key."""
        return list(resolve_callable(self.inputs)(ctx)) if self.inputs else []

    def parse(self, params: Mapping[str, Any] | None, where: str) -> Any:
        """The stage's typed config from YAML params (ConfigError naming ``where`` and the key)."""
        if self.config is None:
            return dict(params or {})
        return from_dict(self.config, params or {}, where)

    def key_params(self, cfg: Any) -> Any:
        """The parameters that enter the stage key: all config fields except the config's ``RUNTIME_FIELDS``."""
        if self.config is None:
            return cfg
        d = to_dict(cfg)
        for name in getattr(self.config, "RUNTIME_FIELDS", ()):
            d.pop(name, None)
        return d


@dataclass
class PipelineSpec:
    """A parsed pipeline YAML."""

    name: str
    stages_module: str
    run_dir: Path
    stages: dict[str, dict[str, Any]]
    source: Path | None = None
    uses: dict[str, str] = field(default_factory=dict)  # stage entry -> registry stage it runs (``use:``), default itself
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # stage entry -> {needed stage: entry it reads} (``from:``)

    def use(self, name: str) -> str:
        """The registry stage that entry ``name`` runs."""
        return self.uses.get(name, name)

    def upstream_for(self, name: str, run_dir: Path) -> dict[str, Path]:
        """Folders of the entries before ``name``, under their own names and under the registry name they run
        (the last such entry, unless ``from:`` picks one), so several encoders' stages coexist in one run dir."""
        names = list(self.stages)
        earlier = names[: names.index(name)]
        up = {n: run_dir / n for n in earlier}
        for n in earlier:
            up[self.use(n)] = run_dir / n
        for need, entry in self.sources.get(name, {}).items():
            up[need] = run_dir / entry
        return up

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineSpec":
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path}: no such pipeline file")
        return cls.from_dict(read_yaml(path), source=path)

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
        parsed, uses, sources = {}, {}, {}
        for name, params in stages.items():
            if params is not None and not isinstance(params, dict):
                raise PipelineError(f"{where}: parameters of stage '{name}' must be a mapping, got {params!r}")
            params = dict(params or {})
            if "use" in params:  # e.g. preprocess_uni: {use: preprocess, encoder: ...}
                uses[str(name)] = str(params.pop("use"))
            if "from" in params:  # e.g. train_uni: {use: train, from: {preprocess: preprocess_uni}}
                picked = params.pop("from")
                if not isinstance(picked, dict) or not all(str(v) in stages for v in picked.values()):
                    raise PipelineError(f"{where}: stages.{name}.from must map needed stages to entries of this pipeline, "
                                        f"got {picked!r}")
                sources[str(name)] = {str(k): str(v) for k, v in picked.items()}
            parsed[str(name)] = expand_env(params, f"{where}: stages.{name}")
        run_dir = Path(expand_env(data.get("run_dir", f"runs/{data['name']}"), f"{where}: run_dir"))
        return cls(str(data["name"]), str(data["stages_module"]), run_dir, parsed, source, uses, sources)

    def with_overrides(self, overrides: list[str]) -> "PipelineSpec":
        """Apply ``stage.key=value`` overrides (value parsed as YAML) and return a new spec."""
        spec = copy.deepcopy(self)
        for item in overrides:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise PipelineError(f"--set {item!r}: expected STAGE.KEY=VALUE")
            lhs, value = item.split("=", 1)
            stage, key = lhs.split(".", 1)
            if stage not in spec.stages:
                raise PipelineError(f"--set {item!r}: no stage '{stage}' in {list(spec.stages)}")
            set_dotted(spec.stages[stage], key, parse_yaml(value, f"--set {item!r}"))
        return spec


def expand_env(value: Any, where: str = "pipeline") -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in strings, recursively through lists and dicts."""
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise PipelineError(f"{where}: environment variable {var} is not set and {value!r} gives no default")
        return _ENV_PATTERN.sub(repl, value)
    if isinstance(value, list):
        return [expand_env(v, where) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}") for k, v in value.items()}
    return value


STAGE_MODULES = ("eca_bio.stages", "eca_msa.stages", "eca_tab.stages")  # the registries a pipeline YAML may name


def allowed_stage_modules() -> tuple[str, ...]:
    """The project's stage registries plus the user's own, listed in ``ECA_STAGES_MODULES`` (comma-separated)."""
    extra = [m.strip() for m in os.environ.get("ECA_STAGES_MODULES", "").split(",") if m.strip()]
    return (*STAGE_MODULES, *extra)


def load_stages(module: str) -> dict[str, Stage]:
    """Import ``module`` and return its ``STAGES`` registry (``Stage`` objects or lazy ``"module:ATTR"`` strings).

    Importing runs a module's code, so a YAML may name only a registry of the project, one listed in
    ``ECA_STAGES_MODULES``, or one already imported: ``stages_module: os`` is refused before any import.
    """
    import sys

    if module not in allowed_stage_modules() and module not in sys.modules:
        raise PipelineError(f"stages_module {module!r} is not a stage registry of this project {list(STAGE_MODULES)}; "
                            f"a module of your own must be listed in ECA_STAGES_MODULES first (importing runs its code)")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PipelineError(f"cannot import stages module '{module}': {exc}") from exc
    stages = getattr(mod, "STAGES", None)
    if not isinstance(stages, dict):
        raise PipelineError(f"module '{module}' has no STAGES dict")
    return {name: resolve_stage(ref, name) for name, ref in stages.items()}


def resolve_callable(ref: Callable | str) -> Callable:
    """A function from itself or from a ``"package.module:function"`` reference."""
    if not isinstance(ref, str):
        return ref
    mod_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod_name), attr)


def resolve_stage(ref: Stage | str, name: str = "") -> Stage:
    """A ``Stage`` object from itself or from a ``"package.module:ATTR"`` reference."""
    if isinstance(ref, Stage):
        return ref
    mod_name, _, attr = str(ref).partition(":")
    stage = getattr(importlib.import_module(mod_name), attr or "STAGE", None)
    if not isinstance(stage, Stage):
        raise PipelineError(f"stage '{name}': {ref} is not a Stage")
    return stage


def read_done(marker: Path) -> dict[str, Any] | None:
    """The record in a ``<stage>.done.json`` marker, or None (also for an unreadable or older marker)."""
    try:
        record = json.loads(Path(marker).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("version") == MARKER_VERSION else None


def digest(obj: Any) -> str:
    """SHA-256 of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def validate_pipeline(spec: PipelineSpec, registry: Mapping[str, Stage] | None = None) -> dict[str, Any]:
    """Parse every stage's parameters into its config and check the stage order; nothing runs."""
    registry = registry or load_stages(spec.stages_module)
    configs = {}
    names = list(spec.stages)
    where = str(spec.source or spec.name)
    for i, name in enumerate(names):
        if spec.use(name) not in registry:
            raise PipelineError(f"{where}: unknown stage '{spec.use(name)}'; {spec.stages_module} has {sorted(registry)}")
        stage = registry[spec.use(name)]
        configs[name] = stage.parse(spec.stages[name], f"{where}: stages.{name}")
        earlier = {spec.use(n) for n in names[:i]} | set(names[:i])
        later = [n for n in stage.needs if n not in earlier and (n in names[i:] or n in {spec.use(m) for m in names[i:]})]
        later += [entry for entry in spec.sources.get(name, {}).values() if entry not in names[:i]]
        if later:
            raise PipelineError(f"{where}: stage '{name}' reads {later}, which must come before it")
    return configs


def run_pipeline(
    spec: PipelineSpec,
    run_dir: Path | None = None,
    from_stage: str | None = None,
    until: str | None = None,
    runtime: Runtime | Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Validate all stages, lock the run directory, then run the stages in order, skipping those up to date.

    Returns the done records of all stages that ran or were skipped.
    """
    registry = load_stages(spec.stages_module)
    configs = validate_pipeline(spec, registry)
    names = list(spec.stages)
    for flag, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in names:
            raise PipelineError(f"{flag} {value}: no such stage in {names}")
    run_dir = Path(run_dir or spec.run_dir)
    forced = names.index(from_stage) if from_stage else len(names)
    last = names.index(until) if until else len(names) - 1
    records: dict[str, dict[str, Any]] = {}
    runtime = Runtime.of(runtime)
    distributed.launch(runtime)
    if not distributed.is_main():
        log = _quiet
    with RunLock(run_dir):
        for i, name in enumerate(names[: last + 1]):
            stage = registry[spec.use(name)]
            upstream = spec.upstream_for(name, run_dir)
            ctx = StageContext(spec.name, name, run_dir / name, configs[name], runtime, upstream, run_dir)
            records[name] = run_stage(stage, ctx, run_dir / f"{name}.done.json",
                                      {n: records[n]["outputs_digest"] for n in names[:i]}, force=i >= forced, log=log,
                                      label=f"[{spec.name}] {name}")
    return records


def run_stage(stage: Stage, ctx: StageContext, marker: Path, upstream: Mapping[str, str], force: bool = False,
              log: Callable[[str], None] = print, label: str | None = None) -> dict[str, Any]:
    """Run one stage unless its done ``marker`` matches its key and its outputs are intact; write the marker."""
    label = label or ctx.stage
    main = distributed.is_main()
    decision: tuple[str, dict | None, dict, str] | None = None
    error: BaseException | None = None
    if main:  # rank 0 decides and tells the others, so all ranks agree even while it writes
        try:
            decision = _decide(stage, ctx, marker, upstream, force)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks below
            error = exc
    distributed.raise_if_any_failed(error)
    action, done, inputs, key = distributed.broadcast(decision)
    if action == "skip":
        log(f"{label}: up to date, skipped")
        return done
    if action:
        log(f"{label}: {action}; running again")
    if main:
        marker.unlink(missing_ok=True)
        removed = clean_temp_files(ctx.out_dir)
        if removed:
            log(f"{label}: removed {len(removed)} temp file(s) left by an interrupted run")
    log(f"{label}: running" + (f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""))
    distributed.barrier()
    start = time.time()
    summary = run_on_ranks(stage, ctx)
    if not main:
        distributed.barrier()
        return distributed.broadcast(None)
    outputs = record_outputs(ctx.out_dir)
    record = {
        "version": MARKER_VERSION,
        "stage": stage.name,
        "pipeline": ctx.pipeline,
        "hash": key,
        "params": stage.key_params(ctx.config),
        "inputs": inputs,
        "upstream": dict(upstream),
        "outputs": outputs,
        "outputs_digest": digest(outputs),
        "runtime": ctx.runtime.to_dict(),
        "world_size": distributed.world_size(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
        "duration_s": round(time.time() - start, 3),
        "summary": dict(summary or {}),
    }
    write_json_atomic(marker, record)
    log(f"{label}: done in {record['duration_s']:.1f}s")
    distributed.barrier()
    return distributed.broadcast(record)


def _decide(stage: Stage, ctx: StageContext, marker: Path, upstream: Mapping[str, str],
            force: bool) -> tuple[str, dict | None, dict, str]:
    """("skip" | reason to run again | "", the done record, input hashes, stage key), decided on rank 0."""
    inputs = {str(p): content_hash(Path(p)) for p in stage.input_paths(ctx)}
    key = digest({"stage": stage.name, "params": stage.key_params(ctx.config), "inputs": inputs, "upstream": dict(upstream)})
    done = read_done(marker)
    if done is None or force:
        return "", done, inputs, key
    if done.get("hash") != key:
        return "parameters or inputs changed", done, inputs, key
    problems = check_outputs(ctx.out_dir, done.get("outputs"))
    if problems:
        return f"outputs changed since it finished ({'; '.join(problems[:3])})", done, inputs, key
    return "skip", done, inputs, key


def run_on_ranks(stage: Stage, ctx: StageContext) -> Mapping[str, Any] | None:
    """``stage.run(ctx)`` on every rank (rank 0 alone for ``main_only`` stages); all ranks stop if one fails."""
    error: BaseException | None = None
    summary = None
    try:
        if not stage.main_only or distributed.is_main():
            summary = stage.execute(ctx)
    except Exception as exc:  # noqa: BLE001 - every rank must hear about it
        error = exc
    distributed.raise_if_any_failed(error)
    return distributed.broadcast(summary) if stage.main_only else summary


def _quiet(*_: Any, **__: Any) -> None:
    return None
