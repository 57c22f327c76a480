"""The search space: a YAML mapping of config keys to distributions, validated against the config schema.

    optim.lr: {log_uniform: [1.0e-6, 1.0e-4]}
    algorithm.eps_high: {uniform: [0.2, 0.6]}
    train.mini_batch_size: {categorical: [16, 32, 64]}
    rollout.group_size: {int: [4, 16], step: 4}
    rewards.0.kwargs.scale: {categorical: [0.5, 1.0]}   # list items by index, reward kwargs by name

Keys are dotted config paths (``gmpo train --help`` lists them); nested sections are flattened, so
``optim: {lr: {log_uniform: [...]}}`` is the same key. Distributions: ``log_uniform: [lo, hi]`` (lo > 0),
``uniform: [lo, hi]`` (optional ``step``), ``int: [lo, hi]`` (optional ``step``, ``log: true``) and
``categorical: [v1, v2, ...]`` (scalars: numbers, strings, booleans, null).

:func:`validate_space` checks everything before a trial runs: the key exists (an unknown key is the
config's own error, naming the key and the closest valid one), the distribution fits the key's type
(a float range on an integer key, a range on a string key, a list-valued key are errors), the range is
well formed, and every probe value (both ends of a range, every category) and every combination of probe
values (up to :data:`MAX_COMBINATIONS`) builds a valid config through :func:`gmpo.config.from_dict`.
No Optuna import here: the space is checked before the study exists.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gmpo.config import Config, ConfigError, from_dict

KINDS = ("log_uniform", "uniform", "int", "categorical")
OPTIONS = {"log_uniform": (), "uniform": ("step",), "int": ("step", "log"), "categorical": ()}
OWNED = {"train.output_dir": "each trial gets its own run directory",
         "train.resume": "every trial starts fresh"}
MAX_COMBINATIONS = 256  # probe-value combinations checked together (skipped above this)


class SpaceError(ConfigError):
    """The search space is invalid; the message names the key and says why."""


@dataclass(frozen=True)
class Param:
    """One searched config key: its distribution ``kind``, range ``low``/``high`` or ``choices``, options."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    step: float | None = None
    log: bool = False

    def probes(self) -> list:
        """The values validated before the study: both ends of a range, or every category."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial) -> Any:
        """Draw this parameter's value from an Optuna trial (``trial.suggest_*`` under the dotted key)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.kind == "log_uniform")

    def to_dict(self) -> dict:
        """The YAML form of this parameter (what the study stores to detect a changed space on resume)."""
        d: dict[str, Any] = {self.kind: list(self.choices) if self.kind == "categorical" else [self.low, self.high]}
        if self.step is not None:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        return d


def load_space(path: str | Path) -> dict:
    """Read a search-space YAML file into a flat {dotted key: spec} mapping (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpaceError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{p}: expected a mapping of config keys to distributions, e.g. "
                         "'optim.lr: {log_uniform: [1.0e-6, 1.0e-4]}'")
    return flatten(data)


def flatten(data: dict, prefix: str = "") -> dict:
    """Nested sections to dotted keys; a mapping holding a distribution keyword is a leaf."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not any(kind in v for kind in KINDS):
            if not v:
                raise SpaceError(f"search space: {key}: empty mapping; give a distribution, e.g. {{uniform: [0.1, 0.5]}}")
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _number(key: str, x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise SpaceError(f"search space: {key}: {what} must be a finite number, got {x!r}")
    return float(x)


def parse_param(key: str, spec: Any) -> Param:
    """One ``key: {kind: ...}`` entry as a :class:`Param` (shape checks only; no schema yet)."""
    hint = f"give one of {', '.join(KINDS)}, e.g. {key}: {{uniform: [0.1, 0.5]}}"
    if not isinstance(spec, dict):
        raise SpaceError(f"search space: {key}: expected a distribution mapping, got {spec!r}; {hint}")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise SpaceError(f"search space: {key}: {'no' if not kinds else 'more than one'} distribution in "
                         f"{sorted(spec)}; {hint}")
    kind = kinds[0]
    extra = set(spec) - {kind, *OPTIONS[kind]}
    if extra:
        allowed = ", ".join(OPTIONS[kind]) or "none"
        raise SpaceError(f"search space: {key}: unknown option(s) {sorted(extra)} for {kind} (allowed: {allowed})")
    value = spec[kind]
    if kind == "categorical":
        if not isinstance(value, list) or not value:
            raise SpaceError(f"search space: {key}: categorical needs a non-empty list of values, got {value!r}")
        for v in value:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise SpaceError(f"search space: {key}: categorical values must be numbers, strings, booleans or "
                                 f"null (Optuna stores scalars), got {v!r}")
        if len({repr(v) for v in value}) != len(value):
            raise SpaceError(f"search space: {key}: categorical values repeat: {value!r}")
        return Param(key, kind, choices=tuple(value))
    if not isinstance(value, list) or len(value) != 2:
        raise SpaceError(f"search space: {key}: {kind} needs [low, high], got {value!r}")
    lo, hi = (_number(key, x, "each bound") for x in value)
    if not lo < hi:
        raise SpaceError(f"search space: {key}: {kind} needs low < high, got [{value[0]}, {value[1]}]")
    step = _number(key, spec["step"], "step") if "step" in spec else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"search space: {key}: log must be true or false, got {log!r}")
    if kind == "log_uniform" and lo <= 0:
        raise SpaceError(f"search space: {key}: log_uniform needs low > 0, got {value[0]}")
    if kind == "int":
        if lo != int(lo) or hi != int(hi) or (step is not None and step != int(step)):
            raise SpaceError(f"search space: {key}: int bounds and step must be integers, got {spec}")
        if log and (lo < 1 or (step or 1) != 1):
            raise SpaceError(f"search space: {key}: int with log: true needs low >= 1 and step 1")
    if step is not None and step <= 0:
        raise SpaceError(f"search space: {key}: step must be > 0, got {step}")
    return Param(key, kind, low=lo, high=hi, step=step, log=log)


# ---------------------------------------------------------------------------------------------
# the schema side


def set_path(data: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` in nested config dict ``data`` (digits index lists); missing sections are created."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i])
        if isinstance(node, list):
            if not part.isdigit():
                raise SpaceError(f"search space: {key}: '{where}' is a list; index it by number ({where}.0)")
            idx = int(part)
            if idx >= len(node):
                raise SpaceError(f"search space: {key}: '{where}' has {len(node)} entr{'y' if len(node) == 1 else 'ies'} "
                                 f"in the recipe; index {idx} is out of range")
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise SpaceError(f"search space: {key}: '{where}' is a value ({node!r}), not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def field_type(key: str) -> Any:
    """The annotated type of a dotted config key (``Any`` under free-form dicts such as reward kwargs)."""
    tp: Any = Config
    for part in key.split("."):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None  # unknown: from_dict reports it with a suggestion
            tp = hints[part]
        elif origin is list:
            if not part.isdigit():
                return None  # set_path says how to index a list
            tp = args[0] if args else Any
        elif origin is dict or tp is Any:
            tp = Any
        else:
            return None
    return tp


def _base_type(tp: Any) -> Any:
    """float | None -> float (the optional wrapper off)."""
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else Any
    return tp


def check_type(p: Param) -> None:
    """The distribution must fit the key's annotated type."""
    tp = field_type(p.key)
    if tp is None:
        return  # an unknown key: the config's own error (with a suggestion) comes from the probe
    base = _base_type(tp)
    if dataclasses.is_dataclass(base):
        names = ", ".join(f.name for f in dataclasses.fields(base))
        raise SpaceError(f"search space: {p.key} is a config section, not a value; search one of its keys ({names})")
    if typing.get_origin(base) in (list, dict):
        raise SpaceError(f"search space: {p.key} holds a {typing.get_origin(base).__name__}; Optuna samples scalars: "
                         f"search an element ({p.key}.0) or a scalar key")
    if base is Any:
        return
    if base is int and p.kind in ("uniform", "log_uniform"):
        raise SpaceError(f"search space: {p.key} is an integer key: use int: [lo, hi] (log: true for a log scale) "
                         f"or categorical, not {p.kind}")
    if base in (str, bool) and p.kind != "categorical":
        raise SpaceError(f"search space: {p.key} is a {base.__name__} key: use categorical: [...], not {p.kind}")


def validate_space(raw: dict, base: dict) -> list[Param]:
    """Parse and check a flat space against the resolved recipe dict ``base``; the params in file order.

    Raises :class:`SpaceError` (a :class:`ConfigError`) naming the key and the reason; nothing is trained.
    """
    params = []
    for key, spec in raw.items():
        if key in OWNED:
            raise SpaceError(f"search space: {key} is set by gmpo tune ({OWNED[key]}); remove it from the space")
        p = parse_param(key, spec)
        check_type(p)
        for v in p.probes():
            _probe(base, {key: v}, f"search space: {key}={v!r}")
        params.append(p)
    _check_combinations(params, base)
    return params


def _probe(base: dict, values: dict, what: str) -> None:
    data = copy.deepcopy(base)
    for k, v in values.items():
        set_path(data, k, v)
    try:
        from_dict(data)
    except SpaceError:
        raise
    except (ConfigError, ValueError, TypeError) as e:
        raise SpaceError(f"{what}: {e}") from None


def _check_combinations(params: list[Param], base: dict) -> None:
    """Every combination of probe values must build a valid config (a mini-batch that no longer divides a
    searched group size, say); skipped when there are more than MAX_COMBINATIONS of them."""
    if len(params) < 2:
        return
    probes = [p.probes() for p in params]
    if math.prod(len(v) for v in probes) > MAX_COMBINATIONS:
        return
    for combo in itertools.product(*probes):
        values = {p.key: v for p, v in zip(params, combo)}
        _probe(base, values, "search space: the combination " + ", ".join(f"{k}={v!r}" for k, v in values.items()))


def trial_dict(base: dict, values: dict) -> dict:
    """A copy of the recipe dict ``base`` with the trial's ``values`` ({dotted key: value}) set."""
    data = copy.deepcopy(base)
    for k, v in values.items():
        set_path(data, k, v)
    return data
