"""The reward registry: names, one-line help and accepted options of every reward function.

Reward functions register themselves next to their code::

    @register_reward("math_answer", options={"timeout": "seconds per math-verify comparison"},
                     validate=check_math_options)
    def math_answer(prompts, completions, answer=None, timeout=1.0, **columns): ...

An entry carries what the config needs without calling the function: its options (the keyword arguments
a reward spec's ``kwargs`` may set, with defaults read from the signature and a help line each) and an
optional ``validate(kwargs)`` that rejects bad values at config time. :func:`available` lists every
entry for ``--help`` and config reference text; :func:`check_spec` validates a ``{name, kwargs}`` spec.
User code needs no registration: ``"package.module:function"`` or ``"path/file.py:function"`` names it.
Torch-free: listing and validating never import torch.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

from gmpo.registry import Registry

RewardFn = Callable[..., list[float]]
REWARDS = Registry("reward")  # name -> function; meta: options ({name: help} or None), validate


def register_reward(name: str, fn: RewardFn | None = None, *, options=None, help: str = "",
                    validate: Callable[[dict], None] | None = None, overwrite: bool = False):
    """Register ``fn`` under ``name``; without ``fn``, a decorator (``@register_reward("name", options=...)``).

    ``options``: the spec ``kwargs`` it accepts, as names or ``{name: help}``; None takes the function's
    ``reward_options`` attribute if it has one, else any keyword parameter it names is accepted.
    ``validate(kwargs)`` raises ValueError for bad option values (run at config time). ``help``: one line
    (default: the docstring's first line). Registering a taken name raises unless ``overwrite``.
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ValueError(f"a reward name must be a non-empty string without ':', got {name!r}")

    def add(f: RewardFn) -> RewardFn:
        if not callable(f):
            raise TypeError(f"reward '{name}' must be callable, got {type(f).__name__}")
        if name in REWARDS and REWARDS.get(name) is f:
            return f  # the same function again (a module imported twice): nothing to do
        opts = options if options is not None else getattr(f, "reward_options", None)
        if opts is not None:
            opts = dict(opts) if isinstance(opts, dict) else {o: "" for o in opts}
            params = _params(f)
            missing = [o for o in opts if params is not None and o not in params and not _var_kw(f)]
            if missing:
                raise ValueError(f"reward '{name}': options {missing} are not parameters of {f.__name__}")
        REWARDS.add(name, f, help=help or _summary(f), overwrite=overwrite, options=opts, validate=validate)
        return f

    return add if fn is None else add(fn)


def _summary(fn: Callable) -> str:
    """The first paragraph of ``fn``'s docstring as one plain line (reST roles and literals unwrapped)."""
    para = (inspect.getdoc(fn) or "").split("\n\n")[0]
    para = re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(para.split()))
    return para.replace("``", "")


def _params(fn: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a C callable
        return None


def _var_kw(fn: Callable) -> bool:
    params = _params(fn)
    return params is None or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _import_module(mod: str, spec_name: str):
    if mod.endswith(".py"):  # a file path: "path/to/rewards.py:fn"
        path = Path(mod).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"reward '{spec_name}': file not found: {path}")
        name = f"gmpo_user_rewards_{abs(hash(str(path)))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ValueError(f"reward '{spec_name}': importing {path} failed: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(mod)
    except Exception as e:
        raise ValueError(
            f"reward '{spec_name}': cannot import module '{mod}': {type(e).__name__}: {e} "
            "(is it on PYTHONPATH? a file path ending in .py works too)"
        ) from e


def get_reward(name: str | RewardFn) -> RewardFn:
    """The reward function for a registered name or ``"package.module:function"`` (a callable: itself).

    Unknown names raise ValueError listing the registered ones and the closest match.
    """
    if callable(name):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name in REWARDS:
        return REWARDS.get(name)
    if ":" in name:
        mod, _, attr = name.rpartition(":")
        if not mod or not attr:
            raise ValueError(f"reward '{name}': expected 'package.module:function'")
        module = _import_module(mod, name)
        if not hasattr(module, attr):
            funcs = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
            raise ValueError(f"reward '{name}': module '{mod}' has no '{attr}' "
                             f"(functions: {', '.join(funcs) or 'none'})")
        fn = getattr(module, attr)
        if not callable(fn):
            raise ValueError(f"reward '{name}': '{attr}' is a {type(fn).__name__}, not a function")
        return fn
    close = difflib.get_close_matches(name, list(REWARDS.names()), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown reward '{name}'{hint}; choose {', '.join(REWARDS.names())}, "
                     "or 'package.module:function'")


def _entry_of(fn: RewardFn):
    """The registry entry whose function is ``fn`` (None for unregistered callables)."""
    for n in REWARDS.names():
        e = REWARDS.entry(n)
        if e.target is fn:
            return e
    return None


def reward_options(name: str | RewardFn) -> dict[str, str] | None:
    """``{option: help}`` a reward accepts in a spec's ``kwargs``; None when any keyword it names is accepted."""
    if isinstance(name, str) and name.strip() in REWARDS:
        return REWARDS.meta(name.strip())["options"]
    fn = get_reward(name)
    entry = _entry_of(fn)
    if entry is not None:
        return entry.meta["options"]
    opts = getattr(fn, "reward_options", None)
    return None if opts is None else (dict(opts) if isinstance(opts, dict) else {o: "" for o in opts})


def check_spec(name: str | RewardFn, kwargs: dict | None = None) -> RewardFn:
    """Validate a reward spec without running it: the name resolves and every kwarg is an accepted option
    with a valid value. Returns the function; ValueError with a clear message otherwise."""
    fn = get_reward(name)
    kwargs = dict(kwargs or {})
    label = name if isinstance(name, str) else getattr(fn, "__name__", "reward")
    options = reward_options(name)
    params = _params(fn)
    for key in kwargs:
        if options is not None and key not in options:
            raise ValueError(f"reward '{label}' has no option '{key}' (options: {', '.join(options) or 'none'})")
        if options is None and params is not None and key not in params and not _var_kw(fn):
            raise ValueError(f"reward '{label}' does not accept keyword '{key}' (signature {inspect.signature(fn)})")
    entry = _entry_of(fn)
    validate = entry.meta.get("validate") if entry is not None else None
    if validate is not None and kwargs:
        try:
            validate(kwargs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"reward '{label}': {e}") from None
    return fn


def available() -> dict[str, dict[str, Any]]:
    """Every registered reward: ``{name: {"help": one line, "options": {option: {"default", "help"}}}}``.

    For config validation and ``--help`` (``options`` is None for a reward that takes any keyword it
    names). Registration order; built-ins first.
    """
    out = {}
    for name in REWARDS.names():
        e = REWARDS.entry(name)
        params = _params(e.target) or {}
        opts = e.meta["options"]
        out[name] = {"help": e.help, "options": None if opts is None else {
            o: {"default": None if o not in params or params[o].default is inspect.Parameter.empty
                else params[o].default, "help": h} for o, h in opts.items()}}
    return out


def describe() -> str:
    """One line per registered reward, ``name(opt=default, ...): help``, for help texts."""
    lines = []
    for name, info in available().items():
        opts = info["options"]
        args = "any keyword" if opts is None else ", ".join(f"{o}={v['default']!r}" for o, v in opts.items())
        sig = f"({args})"
        lines.append(f"{name}{sig}: {info['help']}")
    return "\n".join(lines)


__all__ = ["REWARDS", "RewardFn", "available", "check_spec", "describe", "get_reward", "register_reward",
           "reward_options"]
