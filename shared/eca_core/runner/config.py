"""Typed dataclass configuration: one source of truth for defaults, strict parsing, field docs for CLI help.

``from_dict`` builds a (nested) dataclass from YAML/JSON data; unknown keys, wrong types and values
a config's ``__post_init__`` rejects all raise :class:`ConfigError` naming the key. ``read_yaml``
reads YAML the way users write it (``lr: 2e-3`` is a number, not a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

from eca_core.errors import ConfigError

T = TypeVar("T")


MAX_YAML_VALUES = 100_000  # values a config may expand to through aliases (a 1.6 KB alias bomb expands to billions)


class YAMLLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``2E5`` (no dot) as floats, as YAML 1.2 and users do, and refuses
    a key given twice in one mapping (YAML keeps the last one silently; ``<<`` merges may still be overridden)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        checked = self.__dict__.setdefault("_checked", set())
        if isinstance(node, yaml.MappingNode) and id(node) not in checked:
            checked.add(id(node))
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first given on line {seen[key_node.value] + 1})",
                        key_node.start_mark)
                seen[key_node.value] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "YAML") -> Any:
    """Parse YAML text with :class:`YAMLLoader`; a syntax error, a duplicate key or a document that expands to more
    than ``MAX_YAML_VALUES`` values through aliases becomes a one-line ConfigError (before anything is built)."""
    loader = YAMLLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_VALUES:
            raise ConfigError(f"{where}: expands to over {MAX_YAML_VALUES:,} values through its aliases "
                              f"(an alias bomb?); configs are small")
        return loader.construct_document(node)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from exc
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """How many values ``node`` stands for with every alias expanded (memoised: linear in the document's size)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("a YAML alias refers to itself (a recursive document)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(c, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active) for k, v in node.value)
    else:
        n = 1
    active.discard(key)
    memo[key] = min(n, MAX_YAML_VALUES + 1)
    return memo[key]


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file (ConfigError naming the file if it is missing or invalid)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return parse_yaml(path.read_text(), str(path))


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses.

    Raises :class:`ConfigError` naming ``where`` and the key for unknown keys, values of the wrong
    type, and values the dataclass's own ``__post_init__`` refuses.
    """
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {data!r}")
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    resolve = getattr(cls, "resolve_presets", None)
    if resolve is not None:  # named presets: the preset's values first, the given keys on top
        try:
            data = resolve(data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        hint = "; ".join(f"{u!r}: did you mean {m[0]!r}?" for u in unknown
                         if (m := difflib.get_close_matches(u, sorted(names), n=1)))
        raise ConfigError(f"{where}: unknown key(s) {unknown}" + (f" ({hint})" if hint else f"; allowed: {sorted(names)}"))
    kwargs = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load dataclass ``cls`` from a YAML file (optionally one top-level ``section`` of it)."""
    data = read_yaml(path) or {}
    if section is not None:
        data = data.get(section, {}) if isinstance(data, Mapping) else data
    return from_dict(cls, data, where=str(path) + (f":{section}" if section else ""))


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain dict suitable for YAML/JSON and hashing."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check(cfg: Any, **rules: str) -> None:
    """Range checks for ``__post_init__``: ``check(self, epochs=">=1", lr=">0", dropout="[0,1)")``.

    A rule is ``>=x``, ``>x``, ``<=x`` or an interval ``[a,b]`` / ``[a,b)`` / ``(a,b]`` / ``(a,b)``;
    ``None`` values pass (optional fields). Raises ValueError naming the field, the rule and the value.
    """
    for name, rule in rules.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not _satisfies(v, rule):
                raise ValueError(f"{name} must be {rule.replace(',', ', ')}, got {value!r}")


def _satisfies(v: float, rule: str) -> bool:
    rule = rule.replace(" ", "")
    for op, fn in ((">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b), (">", lambda a, b: a > b), ("<", lambda a, b: a < b)):
        if rule.startswith(op):
            return fn(v, float(rule[len(op):]))
    lo, hi = rule[1:-1].split(",")
    ok_lo = v >= float(lo) if rule[0] == "[" else v > float(lo)
    ok_hi = v <= float(hi) if rule[-1] == "]" else v < float(hi)
    return ok_lo and ok_hi


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field in the dataclass source (its CLI help), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+([A-Za-z_]\w*)\s*:[^\n#]*#\s*(.+)$", source, re.M):
            docs[m.group(1)] = m.group(2).strip()
    return docs


def iter_fields(cls: type, prefix: str = "") -> Iterable[tuple[str, Any, Any, str]]:
    """(dotted name, type, default, doc) of every leaf field of a (nested) dataclass."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, default, docs.get(f.name, "")


def deep_merge(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each mapping of ``overrides`` laid on top, nested mappings merged key by key."""
    out = {k: deep_merge(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for over in overrides:
        for k, v in over.items():
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = deep_merge(v) if isinstance(v, Mapping) else v
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data['a']['b'] = value`` for ``key = 'a.b'`` (creating intermediate mappings)."""
    *parents, leaf = key.split(".")
    for p in parents:
        nxt = data.get(p)
        if not isinstance(nxt, dict):
            nxt = data[p] = {} if nxt is None else dict(nxt) if isinstance(nxt, Mapping) else {}
        data = nxt
    data[leaf] = value


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{where}: {value!r} is not valid ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in (float, int, bool) and isinstance(value, str):
        value = _scalar_from_text(value)  # e.g. "${EPOCHS:-5}" after environment expansion
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def _scalar_from_text(text: str) -> Any:
    try:
        return yaml.load(text, Loader=YAMLLoader)
    except yaml.YAMLError:
        return text
