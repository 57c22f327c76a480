"""Building the trainer's parts from the config (or from objects the caller passes in).

Each function takes only what it needs and returns one part, so the trainer reads as a list of parts and
another driver (a tuner, a distributed launcher, a benchmark) can build the same parts the same way.
"""
from __future__ import annotations

import copy

import torch

from gmpo import models


def resolve_bf16(setting: str, device: torch.device) -> bool:
    """train.bf16 'auto' | 'true' | 'false' -> whether the forward runs under bf16 autocast."""
    return models.bf16_supported(device) if setting == "auto" else setting == "true"


def policy_and_tokenizer(model, tokenizer, mc, device: torch.device):
    """(model, tokenizer, source): objects as given, or loaded from a name/path (``model`` or
    ``mc.name_or_path``); ``source`` is the registered version a ``registry:NAME@ALIAS`` reference resolved
    to (``{"ref", "name", "version", "sha256", "path"}``, resolved once, so the record is what was loaded),
    else None.

    A model object needs its tokenizer; a name or path loads both (see :func:`gmpo.models.load_model`).
    """
    if model is not None and not isinstance(model, str):
        if tokenizer is None:
            raise ValueError("a model object needs its tokenizer: pass tokenizer=..., or pass the model's "
                             "name or path to load both")
        return model, tokenizer, None
    name = model if isinstance(model, str) else mc.name_or_path
    mv = models.registry_version(name)
    source = None if mv is None else {"ref": name, "name": mv.name, "version": mv.version, "sha256": mv.sha256,
                                      "path": mv.path}
    loaded, tok = models.load_model(name if mv is None else mv.path, dtype=mc.dtype, device=device,
                                    cache_dir=mc.cache_dir, trust_remote_code=mc.trust_remote_code)
    return loaded, tokenizer if tokenizer is not None else tok, source


def prepare_model(model, mc, needs_reference: bool):
    """(policy, reference or None): gradient checkpointing, LoRA, and a frozen copy of the initial policy
    when a reference is needed (beta != 0) and LoRA is off (under LoRA the adapter-free base is the reference)."""
    if mc.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = None
    if needs_reference and not mc.lora.enabled:
        ref = copy.deepcopy(model).eval().requires_grad_(False)  # frozen initial policy
    if mc.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = mc.lora
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
    return model, ref


def engine(rc, model, tokenizer, bf16: bool):
    """The rollout backend named by ``rollout.backend`` (see :mod:`gmpo.rollout`)."""
    from gmpo.rollout import make_engine

    return make_engine(rc.backend, model, tokenizer, bf16=bf16, decode_batch_size=rc.decode_batch_size)


def datasets(dc, train_dataset=None, eval_dataset=None):
    """(train, eval) datasets with ``prompt``/``answer`` columns.

    ``train_dataset`` / ``eval_dataset``: ``datasets.Dataset`` objects (their ``data.prompt_field`` and
    ``data.answer_field`` columns are mapped and every row validated) or names/paths that replace
    ``data.dataset`` / ``data.eval_dataset``; None takes the config's. An eval set is cut to ``data.eval_size``.
    """
    from dataclasses import replace

    from gmpo.data.sources import DataError, build_datasets, map_fields

    if isinstance(train_dataset, str):
        dc, train_dataset = replace(dc, dataset=train_dataset), None
    if isinstance(eval_dataset, str):
        dc, eval_dataset = replace(dc, eval_dataset=eval_dataset), None
    train = ev = None
    if train_dataset is not None:
        train = map_fields(train_dataset, dc.prompt_field, dc.answer_field, "train_dataset")
    if eval_dataset is not None:
        ev = map_fields(eval_dataset, dc.prompt_field, dc.answer_field, "eval_dataset")
    if train is None or ev is None:
        if train is not None and not dc.eval_dataset and dc.dataset == "arithmetic":
            raise DataError("train_dataset was given without an eval_dataset: pass eval_dataset=... "
                            "(or set data.eval_dataset) so held-out accuracy measures the same task")
        t2, e2 = build_datasets(dc)
        train, ev = train if train is not None else t2, ev if ev is not None else e2
    elif dc.eval_size and len(ev) > dc.eval_size:
        ev = ev.select(range(dc.eval_size))
    return train, ev


def loader(train_ds, tokenizer, cfg):
    """The seeded, resumable prompt stream of training (:class:`gmpo.data.loader.PromptLoader`)."""
    from gmpo.data.loader import PromptLoader

    return PromptLoader(train_ds, tokenizer, cfg.data, cfg.rollout.prompts_per_step, cfg.train.seed)


def rewards(cfg, reward_funcs=None):
    """(training runner, held-out runner) of ``reward_funcs`` (callables, names, specs) or ``cfg.rewards``.

    The training runner sums every weighted function (errors per ``train.reward_errors``); the held-out
    runner holds the first function alone, weight 1, errors scored 0 (its verdict > 0.5 counts as correct).
    Callables given here are written into ``cfg.rewards`` as ``module:qualname`` so the run directory's
    config.yaml says what scored the run.
    """
    from gmpo.config import RewardSpec
    from gmpo.rewards import RewardRunner

    specs = list(cfg.rewards)
    if reward_funcs is not None:
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        specs = [f if isinstance(f, RewardSpec) else RewardSpec(name=f) for f in funcs]
        cfg.rewards = [RewardSpec(name=_label(s.name), weight=s.weight, kwargs=dict(s.kwargs)) for s in specs]
    first = specs[0]
    heldout = RewardRunner([RewardSpec(name=first.name, weight=1.0, kwargs=dict(first.kwargs))], errors="zero")
    return RewardRunner(specs, errors=cfg.train.reward_errors), heldout


def _label(fn) -> str:
    if isinstance(fn, str):
        return fn
    mod, name = getattr(fn, "__module__", ""), getattr(fn, "__qualname__", type(fn).__name__)
    return f"{mod}:{name}" if mod else name


def stability_tracker():
    """The windowed stability metrics (``stability/*``)."""
    from gmpo.telemetry.stability import StabilityTracker

    return StabilityTracker()


def guard_hooks(gc) -> list:
    """[the training guard] when ``guard.enabled``, else []."""
    if not gc.enabled:
        return []
    from gmpo.guard import Guard

    return [Guard(gc)]
