"""Building a :class:`Config`: from dicts, YAML recipes, dotted ``a.b=v`` overrides and keyword sections.

Unknown keys are errors that name the key and suggest the closest valid one, so a typo never trains with a
silently ignored setting; values are coerced to the annotated types or rejected naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from gmpo.config.check import validate
from gmpo.config.schema import Config, ConfigError

# ----------------------------------------------------------------------------------------------
# building from dicts, YAML and overrides

def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, str) else [v.strip() for v in value.split(",") if v.strip()]
        return [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if isinstance(value, bool):  # YAML reads true/false/yes/no as booleans; str fields want the word
            return "true" if value else "false"
        return "" if value is None else str(value)
    return value


def _build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{(where + '.') if where else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}; valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a nested dict (unknown keys raise ConfigError)."""
    cfg = _build(Config, data or {})
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts/lists (what `config.yaml` in a run directory holds)."""
    return dataclasses.asdict(cfg)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (['a','b','c'], value) with the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': cannot parse value: {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict in place and return it."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if part.isdigit() and isinstance(node, list):
                node = node[int(part)]
                continue
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        last = path[-1]
        if last.isdigit() and isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe (or the defaults when `path` is None) and apply ``a.b=v`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    apply_overrides(data, overrides or [])
    return from_dict(data)


def make_config(recipe: str | Path | None = None, overrides: dict | list | None = None, **sections) -> Config:
    """A validated :class:`Config` from an optional YAML recipe, then section keywords, then dotted overrides.

    ``make_config(train={"steps": 10}, optim={"lr": 1e-5})`` sets fields by section (nested dicts merge
    into the recipe); ``overrides`` takes ``{"optim.lr": 1e-5}`` or ``["optim.lr=1e-5"]``. Unknown keys
    raise :class:`ConfigError` naming the key and suggesting the closest one. Exported as ``gmpo.GMPOConfig``.
    """
    data: dict[str, Any] = to_dict(load_config(recipe)) if recipe is not None else {}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            _merge(data[name], value)
        else:
            data[name] = value
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            node = data
            *path, last = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
    elif overrides:
        apply_overrides(data, list(overrides))
    return from_dict(data)


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
