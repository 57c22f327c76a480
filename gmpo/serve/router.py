"""A/B experiments: arms (model, weight), a control, sticky per-user assignment, frozen weights.

An experiment file (YAML)::

    name: policy            # clients send model="policy" to enter the experiment
    control: stable         # the arm that takes the traffic of an arm whose breaker is open
    arms:
      - {name: stable, model: smollm2, weight: 0.5}
      - {name: candidate, model: gmpo-step-200, weight: 0.5}

The experiment id is ``<name>-<first 8 hex of sha256(arms, weights, control)>``: weights are frozen for an
experiment because changing them changes the id, i.e. starts a new experiment (a fresh row in the log's
``experiments`` table and an ``experiment_start`` event); the old one's records stay separate. A user's arm
is a pure function of (experiment id, user): u = sha256(id + NUL + user) read as a fraction of 2^64, and
the arm is the first whose cumulative normalised weight exceeds u. Same user, same arm, on every server
and after restarts. Requests without a user (no ``user`` field, no ``X-GMPO-User`` header) are assigned
by their request id: a random arm, not sticky.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Arm:
    """One arm: its name, the served model it routes to, its traffic weight."""

    name: str
    model: str
    weight: float


@dataclass
class Experiment:
    """A running A/B experiment (see the module docstring)."""

    name: str
    arms: list[Arm]
    control: str

    def __post_init__(self):
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"experiment name must be a non-empty word, got {self.name!r}")
        if len(self.arms) < 2:
            raise ValueError(f"experiment {self.name!r} needs at least two arms, got {len(self.arms)}")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: arm names must be unique, got {names}")
        if any(not (a.weight > 0) for a in self.arms):
            raise ValueError(f"experiment {self.name!r}: every arm weight must be > 0, got "
                             f"{[a.weight for a in self.arms]}")
        if self.control not in names:
            raise ValueError(f"experiment {self.name!r}: control {self.control!r} is not one of the arms {names}")

    @property
    def id(self) -> str:
        """``name-<hash of the frozen design>``: a new design (weights, models, control) is a new experiment."""
        digest = hashlib.sha256(json.dumps(self.design(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    def design(self) -> dict:
        """The frozen design: arms (name, model, weight), weights normalised, and the control."""
        total = sum(a.weight for a in self.arms)
        return {"arms": [{"name": a.name, "model": a.model, "weight": a.weight / total} for a in self.arms],
                "control": self.control}

    def config_json(self) -> str:
        """What the log's ``experiments.config`` stores: arms, weights, control."""
        d = self.design()
        return json.dumps({"name": self.name, "arms": d["arms"], "weights": {a["name"]: a["weight"] for a in d["arms"]},
                           "control": self.control})

    def arm(self, name: str) -> Arm:
        """The arm called ``name``."""
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def assign(self, user: str) -> Arm:
        """The sticky arm of ``user`` (see the module docstring)."""
        h = hashlib.sha256(f"{self.id}\0{user}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2.0**64  # uniform in [0, 1)
        total, acc = sum(a.weight for a in self.arms), 0.0
        for a in self.arms:
            acc += a.weight / total
            if u < acc:
                return a
        return self.arms[-1]

    @classmethod
    def from_dict(cls, d: dict, source: str = "experiment") -> "Experiment":
        """Build from a parsed YAML/JSON mapping with a clear error for each malformed field."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a mapping with name, control and arms")
        unknown = set(d) - {"name", "control", "arms"}
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)} (allowed: name, control, arms)")
        arms = []
        for i, a in enumerate(d.get("arms") or []):
            if not isinstance(a, dict) or not {"name", "model"} <= set(a) or set(a) - {"name", "model", "weight"}:
                raise ValueError(f"{source}: arms[{i}] must be {{name, model, weight}}, got {a!r}")
            try:
                weight = float(a.get("weight", 1.0))
            except (TypeError, ValueError):
                raise ValueError(f"{source}: arms[{i}].weight must be a number, got {a.get('weight')!r}") from None
            arms.append(Arm(str(a["name"]), str(a["model"]), weight))
        return cls(str(d.get("name", "")), arms, str(d.get("control", arms[0].name if arms else "")))

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        """Read an experiment YAML file."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"experiment file {p} does not exist")
        return cls.from_dict(yaml.safe_load(p.read_text()), str(p))


@dataclass
class Route:
    """Where one request goes and how it is recorded."""

    model: str  # the served model that answers
    experiment: str | None = None  # experiment id
    arm: str | None = None  # the arm that answers (control when the assigned arm's breaker is open)
    assigned_arm: str | None = None  # the arm the user is assigned to


class Router:
    """Maps a request's ``model`` (+ user) to a served model: the experiment's arm or the named model."""

    def __init__(self, experiment: Experiment | None, served: list[str]):
        self.experiment = experiment
        if experiment is not None:
            missing = [a.model for a in experiment.arms if a.model not in served]
            if missing:
                raise ValueError(f"experiment {experiment.name!r}: arm models {missing} are not served "
                                 f"(served: {', '.join(served)}); add --model NAME=PATH for each")
            if experiment.name in served:
                raise ValueError(f"experiment name {experiment.name!r} is also a model name: rename one")
        self.open_arms: set[str] = set()  # arms whose circuit breaker is open

    def route(self, model: str, user: str) -> Route | None:
        """The route for a request, or None when ``model`` names neither a model nor the experiment."""
        exp = self.experiment
        if exp is not None and model == exp.name:
            assigned = exp.assign(user)
            arm = exp.arm(exp.control) if assigned.name in self.open_arms else assigned
            return Route(arm.model, exp.id, arm.name, assigned.name)
        return None
