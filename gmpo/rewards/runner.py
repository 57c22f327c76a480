"""The scoring runner: every configured reward function once per batch, checked and weighted.

:class:`RewardRunner` calls each configured function once per batch, checks what comes back, and sums
the weighted scores. A function that raises stops training with a :class:`RewardError` naming the
function, the sample and an excerpt of its completion; with ``errors="zero"`` the failing samples
score 0 and are counted instead. A function returning the wrong number of scores or a non-number is a
programming error and always raises. Names, options and option values are checked when the runner
is built (:func:`gmpo.rewards.registry.check_spec`). The registry is re-exported here for old imports.
"""
from __future__ import annotations

import inspect
import math
import numbers as _numbers
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gmpo.rewards.registry import REWARDS, RewardFn, check_spec, get_reward, register_reward

if TYPE_CHECKING:
    import torch


class RewardError(RuntimeError):
    """A reward function failed; ``fn``, ``index`` (None when no single sample is to blame) and ``excerpt`` say where."""

    def __init__(self, message: str, fn: str = "", index: int | None = None, excerpt: str = ""):
        super().__init__(message)
        self.fn, self.index, self.excerpt = fn, index, excerpt


# ----------------------------------------------------------------------------------------------
# the runner

@dataclass
class RewardResult:
    """Scores of one batch: the weighted sum, each function's raw scores, and the failures scored 0."""

    total: torch.Tensor  # (N,) float32: sum_k weight_k * per_fn[k]
    per_fn: dict[str, torch.Tensor]  # name -> (N,) float32, unweighted
    n_errors: int = 0  # samples scored 0 because their function raised (errors="zero")
    errors_by_fn: dict[str, int] = field(default_factory=dict)  # name -> failures


@dataclass
class _Fn:
    name: str
    fn: RewardFn
    weight: float
    kwargs: dict[str, Any]
    by_keyword: bool  # TRL style: called as f(prompts=..., completions=..., **cols)
    takes_prompts: bool
    var_kw: bool  # accepts **kwargs: every column is passed
    accepts: frozenset  # named parameters it accepts
    required: tuple  # named parameters without a default (beyond prompts/completions)


def _inspect(name: str, fn: RewardFn, kwargs: dict) -> _Fn:
    """How to call ``fn`` (by keyword or position, which columns it takes); ``kwargs`` already validated."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a C callable: pass everything positionally-plus-keywords
        return _Fn(name, fn, 1.0, kwargs, False, True, True, frozenset(), ())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = {p.name for p in named}
    by_keyword = "completions" in names
    if by_keyword:
        skip = {"prompts", "completions"}
        takes_prompts = "prompts" in names or var_kw
    else:  # positional: the first two parameters are prompts and completions
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
            raise ValueError(
                f"reward '{name}' must take (prompts, completions, **columns) or name a 'completions' parameter; "
                f"its signature is {inspect.signature(fn)}"
            )
        skip = {p.name for p in positional[:2]}
        takes_prompts = True
    required = tuple(p.name for p in named if p.default is p.empty and p.name not in skip)
    return _Fn(name, fn, 1.0, dict(kwargs), by_keyword, takes_prompts, var_kw, frozenset(names - skip), required)


def _excerpt(text: Any, n: int = 160) -> str:
    s = text if isinstance(text, str) else repr(text)
    return s if len(s) <= n else s[: n - 50] + " ... " + s[-45:]


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported: never import it here
    return torch is not None and isinstance(x, torch.Tensor)


def _as_scores(name: str, out: Any, n: int) -> list[Any]:
    """The function's return value as a list of length n (raising RewardError otherwise)."""
    if _is_tensor(out):
        out = out.detach().reshape(-1).tolist() if out.dim() <= 1 else out
    elif hasattr(out, "tolist") and hasattr(out, "shape"):  # numpy
        out = out.reshape(-1).tolist() if len(out.shape) <= 1 else out
    if not isinstance(out, (list, tuple)):
        raise RewardError(
            f"reward function '{name}' returned {type(out).__name__}; it must return a list of {n} numbers", fn=name
        )
    if len(out) != n:
        raise RewardError(f"reward function '{name}' returned {len(out)} scores for {n} completions", fn=name)
    return list(out)


def _number(v: Any) -> float | None:
    if _is_tensor(v) and v.numel() == 1:
        return float(v)
    if isinstance(v, _numbers.Real) or (hasattr(v, "dtype") and hasattr(v, "item") and getattr(v, "ndim", 1) == 0):
        return float(v)
    return None


class RewardRunner:
    """Score completions with several weighted reward functions.

    ``specs``: :class:`gmpo.config.RewardSpec` objects (or dicts with name/weight/kwargs, or names).
    ``errors``: "raise" (a raising function stops with :class:`RewardError`) or "zero" (its failing
    samples score 0 and are counted in ``n_errors``). Functions get only the columns they name unless
    they take ``**kwargs``; spec ``kwargs`` are passed as keyword arguments (overriding a column of the
    same name).
    """

    def __init__(self, specs: list, errors: str = "raise"):
        if errors not in ("raise", "zero"):
            raise ValueError(f"errors must be 'raise' or 'zero', got {errors!r}")
        if not specs:
            raise ValueError("at least one reward function is needed")
        self.errors = errors
        self.fns: list[_Fn] = []
        for spec in specs:
            if isinstance(spec, str):
                name, weight, kwargs = spec, 1.0, {}
            elif isinstance(spec, dict):
                unknown = set(spec) - {"name", "weight", "kwargs"}
                if unknown or "name" not in spec:
                    raise ValueError(f"reward spec {spec!r}: needs 'name' and only name/weight/kwargs")
                name, weight, kwargs = spec["name"], spec.get("weight", 1.0), spec.get("kwargs") or {}
            else:
                name, weight, kwargs = spec.name, spec.weight, spec.kwargs or {}
            if isinstance(weight, bool) or not isinstance(weight, _numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"reward '{name}': weight must be a finite number, got {weight!r}")
            label = getattr(name, "__name__", "reward") if callable(name) else str(name).strip()
            taken = {f.name for f in self.fns}
            key, k = label, 2
            while key in taken:  # the same function twice (e.g. with different kwargs)
                key, k = f"{label}#{k}", k + 1
            entry = _inspect(key, check_spec(name, kwargs), dict(kwargs))  # names, options and values checked
            entry.weight = float(weight)
            self.fns.append(entry)

    @property
    def names(self) -> list[str]:
        """Keys of :attr:`RewardResult.per_fn`, in spec order."""
        return [f.name for f in self.fns]

    def _invoke(self, f: _Fn, prompts: list, completions: list, columns: dict[str, list]) -> list[Any]:
        cols = columns if f.var_kw else {k: v for k, v in columns.items() if k in f.accepts}
        cols = {**cols, **f.kwargs}
        if f.by_keyword:
            head = {"completions": completions}
            if f.takes_prompts:
                head["prompts"] = prompts
            cols = {k: v for k, v in cols.items() if k not in head}
            return f.fn(**head, **cols)
        return f.fn(prompts, completions, **cols)

    def _score_one(self, f: _Fn, i: int, prompts, completions, columns) -> float:
        """Score sample i alone (used to find which samples make a batch call fail)."""
        sub = {k: [v[i]] for k, v in columns.items()}
        out = _as_scores(f.name, self._invoke(f, [prompts[i]], [completions[i]], sub), 1)
        return self._check_value(f, out[0], i, completions[i])

    def _check_value(self, f: _Fn, v: Any, i: int, completion: Any) -> float:
        x = _number(v)
        if x is None:
            raise RewardError(
                f"reward function '{f.name}' returned {type(v).__name__} {v!r:.40} for sample {i}; it must return "
                "a number for every completion (0.0 where it does not apply)", fn=f.name, index=i,
                excerpt=_excerpt(completion),
            )
        if not math.isfinite(x):
            raise ValueError(f"non-finite reward {x}")
        return x

    def _fail(self, f: _Fn, i: int | None, completions, err: BaseException) -> RewardError:
        if i is None:
            msg = (f"reward function '{f.name}' failed on a batch of {len(completions)} completions although each "
                   f"sample alone scores: {type(err).__name__}: {err}")
            return RewardError(msg, fn=f.name)
        ex = _excerpt(completions[i])
        msg = (f"reward function '{f.name}' failed on sample {i} (completion: {ex!r}): {type(err).__name__}: {err} "
               "(set train.reward_errors=zero to score such samples 0 and count them)")
        return RewardError(msg, fn=f.name, index=i, excerpt=ex)

    def _run_one(self, f: _Fn, prompts, completions, columns) -> tuple[list[float], int]:
        n = len(completions)
        try:
            raw = _as_scores(f.name, self._invoke(f, prompts, completions, columns), n)
        except RewardError:
            raise
        except Exception as batch_err:  # find the failing samples one by one
            scores, bad = [], 0
            for i in range(n):
                try:
                    scores.append(self._score_one(f, i, prompts, completions, columns))
                except RewardError:
                    raise
                except Exception as e:
                    if self.errors == "raise":
                        raise self._fail(f, i, completions, e) from e
                    scores.append(0.0)
                    bad += 1
            if bad == 0 and self.errors == "raise":
                raise self._fail(f, None, completions, batch_err) from batch_err
            return scores, bad
        scores, bad = [], 0
        for i, v in enumerate(raw):
            try:
                scores.append(self._check_value(f, v, i, completions[i]))
            except RewardError:
                raise
            except ValueError as e:  # NaN / inf
                if self.errors == "raise":
                    raise self._fail(f, i, completions, e) from None
                scores.append(0.0)
                bad += 1
        return scores, bad

    def __call__(self, prompts: list, completions: list, columns: dict[str, list] | None = None) -> RewardResult:
        """Score N completions; ``prompts`` and every column hold one entry per completion."""
        import torch

        columns = dict(columns or {})
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions: repeat each prompt once per completion")
        for k, v in columns.items():
            if len(v) != n:
                raise ValueError(f"column '{k}' has {len(v)} entries for {n} completions")
        for f in self.fns:
            missing = [r for r in f.required if r not in columns and r not in f.kwargs]
            if missing:
                raise RewardError(
                    f"reward function '{f.name}' needs column(s) {', '.join(missing)} that the data does not have "
                    f"(columns: {', '.join(columns) or 'none'})", fn=f.name,
                )
        per_fn: dict[str, torch.Tensor] = {}
        errors: dict[str, int] = {}
        total = torch.zeros(n, dtype=torch.float64)
        for f in self.fns:
            scores, bad = self._run_one(f, prompts, completions, columns)
            t = torch.tensor(scores, dtype=torch.float64)  # (N,)
            total += f.weight * t
            per_fn[f.name] = t.float()
            errors[f.name] = bad
        return RewardResult(total=total.float(), per_fn=per_fn, n_errors=sum(errors.values()), errors_by_fn=errors)


__all__ = ["REWARDS", "RewardError", "RewardResult", "RewardRunner", "check_spec", "get_reward", "register_reward"]
