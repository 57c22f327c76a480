"""Step time and learning: TRL's GMPOTrainer vs gmpo on the reference GMPO step, in one process, alternating.

    .venv/bin/python benchmarks/step_vs_trl.py                        # 30 steps each: speed + learning parity
    .venv/bin/python benchmarks/step_vs_trl.py --measure-only 6       # quick speed run: 1 warm-up + 6 steps each
    .venv/bin/python benchmarks/step_vs_trl.py --measure-only 2 --threads 1 --no-append   # a smoke run

Reference step (issue 3): SmolLM2-135M-Instruct, 8 prompts x 8 completions, at most 32 new tokens,
temperature 1.0, lr 1e-5, one optimizer step per rollout batch, the arithmetic task
(configs/arithmetic_gmpo.yaml with train.mini_batch_size=0), 2 CPU threads.

Both trainers get their own copy of the same weights and the same prompts in the same order (TRL's
dataset is the sequence of prompts gmpo's loader draws, pre-rendered with the chat template, unshuffled),
the same reward (gmpo's arithmetic reward; 0 for a completion that hits the 32-token cap without EOS, the
recipe's truncated_reward=zero), constant lr 1e-5 (no warm-up on either side: HF's and gmpo's warm-up
formulas differ by one step), gradient clipping at 1.0, AdamW,
GMPO clipping (log-ratio +-0.4), group-normalised advantages, no KL, no vLLM. TRL runs at its fastest CPU
setting: bf16 autocast (--trl-dtype fp32 for float32), gradient checkpointing off (its default is on),
one generation per step (steps_per_generation = num_iterations = 1).

Steps alternate: a TrainerCallback times each TRL step from on_step_begin to on_step_end (generation,
scoring, forward, backward, optimizer; TRL's logging and data fetch fall outside, in TRL's favour) and then
runs one gmpo step (``GMPOTrainer.step()``, the public step API: rollout, update, logging, hooks), timed
separately. The first --warmup steps
of each side are excluded from the medians (they are in the reward curves). Afterwards, in the same
process: rollout tokens/s of gmpo's engine vs Hugging Face ``generate`` at equal batch (64 sequences, 32
new tokens, same dtype) and the bf16 matmul peak that the training phase's FLOP/s is a fraction of.

Prints a report and appends it to benchmarks/RESULTS.md (--no-append to skip). TRL and accelerate are
benchmark-only dependencies (``pip install -e .[bench]``); gmpo never imports them.

On a CUDA machine (--device auto picks it) both sides train a random-init model with Qwen2.5-0.5B's shape
(--model qwen2.5-0.5b-shape; rewards are then ~0, so only the speed figures mean anything).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RECIPE = ROOT / "configs" / "arithmetic_gmpo.yaml"
# the reference step on top of the recipe (micro_batch_size only cuts the forward: same gradient)
GMPO_OVERRIDES = ["train.mini_batch_size=0", "optim.lr=1e-5", "optim.warmup_steps=0", "train.micro_batch_size=64",
                  "eval.at_start=false",
                  "eval.at_end=false", "log.progress=false", "log.print_every=0"]
QWEN_SHAPE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0)
PHASES = ("rollout/prefill", "rollout/decode", "reward", "forward", "backward", "optimizer", "other")


# ---------------------------------------------------------------------------------------------------------
# setup

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="steps per trainer, warm-up included (learning parity: 30)")
    ap.add_argument("--measure-only", type=int, default=0, metavar="K",
                    help="quick speed run: --warmup + K steps per trainer (overrides --steps)")
    ap.add_argument("--warmup", type=int, default=1, help="leading steps per trainer left out of the timing medians")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for both trainers")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--model", default="", help="smollm2-135m-instruct (CPU default) | qwen2.5-0.5b-shape (CUDA "
                    "default, random init) | tiny (gmpo.testing, for smoke tests) | a path or hub name")
    ap.add_argument("--trl-dtype", default="bf16", choices=["bf16", "fp32"], help="TRL's precision (bf16 autocast)")
    ap.add_argument("--gen-reps", type=int, default=2, help="runs per backend in the engine-vs-generate comparison")
    ap.add_argument("--results", default=str(RESULTS), help="markdown file the report is appended to")
    ap.add_argument("--no-append", action="store_true", help="print the report only")
    ap.add_argument("gmpo_overrides", nargs="*", metavar="key=value",
                    help="extra gmpo config overrides after the reference ones (e.g. train.micro_batch_size=16)")
    args = ap.parse_args(argv)
    if args.measure_only:
        args.steps = args.warmup + args.measure_only
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_policy(name: str, device: torch.device):
    """(model, tokenizer, label) for --model; both trainers get deep copies of this model."""
    if not name:
        name = "qwen2.5-0.5b-shape" if device.type == "cuda" else "smollm2-135m-instruct"
    if name == "tiny":
        from gmpo.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        return tiny_model(tok, seed=0), tok, "tiny (gmpo.testing, random init)"
    from gmpo.models import load_model

    if name == "qwen2.5-0.5b-shape":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        _, tok = load_model("smollm2-135m-instruct")  # a chat tokenizer; its ids fit Qwen's larger vocabulary
        torch.manual_seed(0)
        cfg = Qwen2Config(**QWEN_SHAPE, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id)
        model = Qwen2ForCausalLM(cfg)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        return model, tok, "random-init Qwen2.5-0.5B shape (SmolLM2 tokenizer)"
    model, tok = load_model(name)
    return model, tok, name


def gmpo_config(args, out_dir: str, device: torch.device):
    from gmpo.config import load_config

    overrides = GMPO_OVERRIDES + [f"train.threads={args.threads}", f"train.steps={args.steps}",
                                  f"train.output_dir={out_dir}", f"train.device={device.type}"]
    if args.model == "tiny":
        overrides.append("train.bf16=false")
    return load_config(RECIPE, overrides + list(args.gmpo_overrides)), overrides + list(args.gmpo_overrides)


def machine(threads: int) -> str:
    import transformers

    from gmpo.perf import cpu_name

    cpu = cpu_name()
    try:
        import trl

        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, nproc {os.cpu_count()}{gpu}; torch {torch.__version__} ({threads} threads), transformers "
            f"{transformers.__version__}, trl {trl_v}, Python {platform.python_version()}")


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> None:
    """Restart the kernel's resident high-water mark (VmHWM) of this process (Linux >= 4.0; else no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_since_reset_mb() -> float:
    """VmHWM in MB: the resident peak since :func:`reset_peak_rss` (NaN where /proc is missing)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------------------------------------
# gmpo side

class GmpoSide:
    """A :class:`gmpo.train.GMPOTrainer` driven one step at a time through its public step API.

    The constructor opens the run (``start()``: run directory, sinks, the FLOP/s peak, ``on_train_start``
    hooks); ``step()`` runs ``GMPOTrainer.step()`` and returns {"s": wall seconds, "reward": reward/mean,
    "metrics": the step's metrics, "phases": seconds per PHASES entry}; ``close()`` ends the run.
    """

    def __init__(self, cfg, model, tok):
        from gmpo import perf
        from gmpo.train import GMPOTrainer

        self.trainer = tr = GMPOTrainer(model, tok, cfg)
        self.timer = perf.PhaseTimer(tr.device)
        perf.instrument(tr, self.timer)
        tr.start()
        self.history: list[dict] = []

    def step(self) -> dict:
        tr = self.trainer
        self.timer.reset()
        if tr.device.type == "cuda":
            torch.cuda.synchronize(tr.device)
        t0 = time.perf_counter()
        metrics = tr.step()
        if tr.device.type == "cuda":
            torch.cuda.synchronize(tr.device)
        seconds = time.perf_counter() - t0
        rec = {"s": seconds, "reward": metrics["reward/mean"], "metrics": metrics,
               "phases": breakdown(seconds, metrics, dict(self.timer.totals))}
        self.history.append(rec)
        return rec

    def close(self) -> dict:
        """End the gmpo run (closes its sinks); its summary."""
        return self.trainer.close()


def breakdown(step_s: float, metrics: dict, timed: dict) -> dict:
    """Seconds per PHASES entry of one gmpo step from its metrics and the PhaseTimer totals."""
    rollout = float(metrics.get("perf/rollout_s", 0.0))
    prefill = timed.get("rollout/prefill", float("nan"))
    out = {"rollout/prefill": prefill,
           "rollout/decode": rollout - prefill if prefill == prefill else rollout,
           "reward": float(metrics.get("perf/reward_s", 0.0)),
           "forward": timed.get("forward", 0.0), "backward": timed.get("backward", 0.0),
           "optimizer": timed.get("optimizer", 0.0)}
    known = rollout + out["reward"] + out["forward"] + out["backward"] + out["optimizer"]
    out["other"] = max(0.0, step_s - known)
    return out


def draw_prompts(cfg, tok, steps: int) -> list[list[dict]]:
    """The prompt records gmpo's loader yields for `steps` steps (a fresh loader with the same seed)."""
    from gmpo.data.loader import PromptLoader
    from gmpo.data.sources import build_datasets

    train_ds, _ = build_datasets(cfg.data, cfg.train.seed)
    loader = PromptLoader(train_ds, tok, cfg.data, cfg.rollout.prompts_per_step, cfg.train.seed)
    return [loader.next_batch() for _ in range(steps)]


# ---------------------------------------------------------------------------------------------------------
# TRL side (imports trl lazily: the gmpo helpers above work without it)

class TrlReward:
    """gmpo's reward runner as a TRL reward function; 0 for truncated completions; records each call's mean."""

    def __init__(self, cfg, max_len: int, eos_ids: list[int]):
        from gmpo.rewards import RewardRunner

        self.runner = RewardRunner(cfg.rewards, errors=cfg.train.reward_errors)
        self.zero_truncated = cfg.rollout.truncated_reward == "zero"
        self.max_len, self.eos = max_len, set(eos_ids)
        self.means: list[float] = []
        self.__name__ = "gmpo_" + "_".join(r.name.rsplit(":", 1)[-1] for r in cfg.rewards)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        cols = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)}
        questions = cols.pop("question", prompts)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        total = self.runner(questions, texts, cols).total.float().tolist()
        if self.zero_truncated and completion_ids is not None:
            total = [0.0 if (len(ids) >= self.max_len and (not ids or ids[-1] not in self.eos)) else r
                     for r, ids in zip(total, completion_ids)]
        self.means.append(sum(total) / max(len(total), 1))
        return total


def trl_dataset(batches: list[list[dict]]):
    """Rows in gmpo's order: prompt = the rendered chat prompt (TRL adds no template), question = the raw text."""
    from datasets import Dataset

    rows = []
    for items in batches:
        for it in items:
            row = {k: v for k, v in it.items() if k not in ("prompt", "prompt_text", "prompt_ids")}
            row.update(prompt=it["prompt_text"], question=it["prompt"])
            rows.append(row)
    return Dataset.from_list(rows)


def build_trl(args, cfg, model, tok, dataset, reward, device: torch.device, out_dir: str, callbacks):
    """TRL's GMPOTrainer on the reference step; returns (trainer, precision label)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import PrinterCallback, ProgressCallback
    from trl.experimental.gmpo import GMPOConfig, GMPOTrainer

    from gmpo.algo import presets as algorithms

    spec = algorithms.resolve(cfg.algorithm, cfg.rollout.max_new_tokens, cfg.rollout.dynamic_sampling)
    if spec.loss != "gmpo" or spec.needs_reference:
        raise ValueError(f"the TRL side runs GMPO without KL; the gmpo config resolves to {spec.loss} (beta {spec.beta})")
    eps = (spec.loss_kwargs.get("eps_low", 0.4), spec.loss_kwargs.get("eps_high", 0.4))
    rc = cfg.rollout
    n = rc.prompts_per_step * rc.group_size
    common = dict(
        output_dir=out_dir, per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=rc.group_size,
        steps_per_generation=1, num_iterations=1, max_completion_length=rc.max_new_tokens, temperature=rc.temperature,
        top_p=rc.top_p, top_k=rc.top_k, learning_rate=cfg.optim.lr, lr_scheduler_type="constant",
        weight_decay=cfg.optim.weight_decay, adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1], adam_epsilon=cfg.optim.adam_eps, max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=args.steps, beta=0.0, epsilon=eps[0], epsilon_high=eps[1], scale_rewards="group",
        shuffle_dataset=False, seed=cfg.train.seed, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=device.type == "cpu", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False,
    )
    # checkpointing off; transformers >= 5.2x renamed the argument (the old name warns), older ones lack the new
    names = {f.name for f in dataclasses.fields(GMPOConfig)}
    common["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = False
    order = ["bf16", "fp32"] if args.trl_dtype == "bf16" else ["fp32"]
    last = None
    for prec in order:
        try:
            targs = GMPOConfig(**common, bf16=prec == "bf16", fp16=False)
            trainer = GMPOTrainer(model=model, reward_funcs=[reward], args=targs, train_dataset=dataset,
                                  processing_class=tok, callbacks=callbacks)
            for cb in (PrinterCallback, ProgressCallback):  # our callback prints one line per step
                trainer.remove_callback(cb)
            return trainer, prec
        except Exception as err:  # bf16 unsupported here: fall back to float32 and say so
            last = err
            print(f"TRL with {prec} failed ({type(err).__name__}: {err}); trying the next precision", file=sys.stderr)
    raise RuntimeError(f"TRL GMPOTrainer could not be built: {last}")


def _alternator(gmpo: GmpoSide, log: dict):
    """A TrainerCallback timing TRL steps and running one gmpo step after each."""
    from transformers import TrainerCallback

    cuda = gmpo.trainer.device.type == "cuda"

    class Alternate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            reset_peak_rss()
            log["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
                log["trl_cuda_peak"] = max(log.get("trl_cuda_peak", 0), torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()
            log["trl"].append(time.perf_counter() - log["t0"])
            log["trl_rss"] = max(log.get("trl_rss", 0.0), peak_rss_since_reset_mb())
            reset_peak_rss()
            rec = gmpo.step()
            log["gmpo_rss"] = max(log.get("gmpo_rss", 0.0), peak_rss_since_reset_mb())
            if cuda:
                log["gmpo_cuda_peak"] = max(log.get("gmpo_cuda_peak", 0), torch.cuda.max_memory_allocated())
            k = len(log["trl"])
            print(f"step {k:3d}  TRL {log['trl'][-1]:7.2f} s  reward {log['trl_reward'][-1] if log['trl_reward'] else float('nan'):.3f}"
                  f"  |  gmpo {rec['s']:6.2f} s  reward {rec['reward']:.3f}", flush=True)

    return Alternate()


# ---------------------------------------------------------------------------------------------------------
# same-run side measurements

def hf_generate_tokens_per_s(model, tok, prompts: list[list[int]], n: int, max_new: int, temperature: float,
                             bf16: bool, seed: int) -> tuple[float, int]:
    """Plain ``model.generate`` over the P x n expanded rows (left-padded); (seconds, real new tokens)."""
    from transformers import GenerationConfig

    from gmpo.rollout.engine import eos_token_ids, pad_token_id

    device = next(model.parameters()).device
    pad, eos = pad_token_id(tok), eos_token_ids(model, tok)
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts]).repeat_interleave(n, 0).to(device)
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts]).repeat_interleave(n, 0).to(device)
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                           pad_token_id=pad, eos_token_id=eos)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
    _sync(device)
    t0 = time.perf_counter()
    with ctx:  # no inference_mode: it would switch off autocast's weight-cast cache (HF at its fastest)
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
    _sync(device)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    gen = out[:, L:].cpu()
    is_eos = torch.isin(gen, torch.tensor(eos))
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((len(gen),), gen.shape[1]))
    return seconds, int(first.sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rollout_comparison(side: GmpoSide, prompts: list[list[int]], reps: int) -> dict:
    """gmpo engine vs HF generate at equal batch (P x G rows, max_new_tokens), alternating; median tokens/s."""
    from gmpo.rollout import SamplingParams

    tr = side.trainer
    rc = tr.cfg.rollout
    params = SamplingParams(n=rc.group_size, max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, seed=1234)
    eng, hf = [], []
    for r in range(reps):
        _sync(tr.device)
        t0 = time.perf_counter()
        out = tr.engine.generate(prompts, params)
        _sync(tr.device)
        eng.append(int(out.lengths.sum()) / (time.perf_counter() - t0))
        s, toks = hf_generate_tokens_per_s(tr.model, tr.tokenizer, prompts, rc.group_size, rc.max_new_tokens,
                                           rc.temperature, tr.bf16, seed=1234 + r)
        hf.append(toks / s)
    return {"engine": statistics.median(eng), "hf": statistics.median(hf), "rows": len(prompts) * rc.group_size,
            "max_new": rc.max_new_tokens, "bf16": tr.bf16}


# ---------------------------------------------------------------------------------------------------------
# report

def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def report(args, info: dict) -> str:
    """The markdown section (also printed)."""
    w = args.warmup
    trl_s, gm = info["trl_s"][w:], [h["s"] for h in info["gmpo"][w:]]
    trl_med, gm_med = _med(trl_s), _med(gm)
    ratio = trl_med / gm_med if gm_med > 0 else float("nan")
    tr_rewards, gm_rewards = info["trl_rewards"], [h["reward"] for h in info["gmpo"]]
    lastk = min(10, len(gm_rewards))
    mfu = [h["metrics"].get("perf/mfu", float("nan")) for h in info["gmpo"][w:]]
    train_s = [h["metrics"].get("perf/train_s", float("nan")) for h in info["gmpo"][w:]]
    peak = info["peak_flops"]
    phases = {p: _med([h["phases"][p] for h in info["gmpo"][w:]]) for p in PHASES}
    trained_all = [h["metrics"].get("perf/rows_trained_frac", 1.0) for h in info["gmpo"]]
    trained = trained_all[w:]
    ro = info["rollout"]
    kind = "speed run (too short for learning parity)" if args.measure_only else "speed + learning parity"
    lines = [
        f"## Step time vs TRL GMPOTrainer ({dt.date.today().isoformat()}, {kind})",
        "",
        f"Command: `.venv/bin/python benchmarks/step_vs_trl.py {' '.join(info['argv'])}`".rstrip() + "  ",
        f"Machine: {info['machine']}; load average at start {info['load_start']}, at end {info['load_end']}  ",
        f"Model: {info['model']} ({info['n_params'] / 1e6:.1f}M parameters) on {info['device']}; "
        f"{args.steps} steps per trainer, first {w} excluded from the medians  ",
        f"gmpo: `{RECIPE.relative_to(ROOT)}` + `{' '.join(info['overrides'])}`; bf16 autocast {info['gmpo_bf16']}  ",
        f"TRL {info['trl_version']} `trl.experimental.gmpo.GMPOTrainer`: precision {info['trl_precision']}, "
        "gradient checkpointing off, batch 64 = 8 prompts x 8, steps_per_generation = num_iterations = 1, "
        "no vLLM, same prompts in the same order, same reward (truncated -> 0)",
        "",
        "| | TRL | gmpo | TRL / gmpo |",
        "|---|---:|---:|---:|",
        f"| median step (s) | {trl_med:.2f} | {gm_med:.2f} | **{ratio:.1f}x** |",
        f"| min / max step (s) | {min(trl_s):.2f} / {max(trl_s):.2f} | {min(gm):.2f} / {max(gm):.2f} | |",
        f"| mean reward, all {len(gm_rewards)} steps | {_mean(tr_rewards):.3f} | {_mean(gm_rewards):.3f} | |",
        f"| mean reward, last {lastk} steps | {_mean(tr_rewards[-lastk:]):.3f} | {_mean(gm_rewards[-lastk:]):.3f} | |",
        "",
        f"Learning parity (gmpo's mean reward over the last {lastk} steps not below TRL's): "
        + ("**yes**" if _mean(gm_rewards[-lastk:]) >= _mean(tr_rewards[-lastk:]) else "**no**")
        + (" (too few steps to judge; run the default 30)" if args.steps < 20 else "") + ".",
        "",
        f"Rollout at equal batch ({ro['rows']} sequences, {ro['max_new']} new tokens, temperature "
        f"{info['temperature']}, bf16 {ro['bf16']}, median of {args.gen_reps}): gmpo engine {ro['engine']:.0f} "
        f"tokens/s, HF `generate` {ro['hf']:.0f} tokens/s ({ro['engine'] / ro['hf']:.1f}x).  ",
        f"Training phase: median {_med(train_s):.2f} s at {_med(mfu) * peak / 1e9:.0f} GFLOP/s model FLOPs "
        f"(6 x params x tokens) = {_med(mfu):.1%} of the {info['peak_dtype']} matmul peak measured in this run "
        f"({peak / 1e9:.0f} GFLOP/s, square 1024 matmul on CPU / 8192 on GPU).  ",
        f"Peak memory (resident, whole process: both trainers live in it): {info['rss_peak']:.0f} MB overall; "
        f"{info.get('trl_rss') or float('nan'):.0f} MB at most during a TRL step, "
        f"{info.get('gmpo_rss') or float('nan'):.0f} MB at most during a gmpo step (each includes the other "
        f"trainer's resident weights and optimizer state; {info['rss_models']:.0f} MB after loading the models)" + (
            f"; CUDA max allocated TRL {info['trl_cuda_peak'] / 2**20:.0f} MB, gmpo {info['gmpo_cuda_peak'] / 2**20:.0f} MB"
            if info.get("trl_cuda_peak") else "") + ".",
        "",
        f"Rows trained: gmpo ran the training forward/backward on a median {_med(trained):.0%} of the completions "
        "per measured step (the others had advantage exactly 0 in a group of equal rewards and there is no KL term, "
        "so their loss and gradient are exactly 0; `train.skip_zero_advantage=false` runs them too, as TRL does). "
        "Per step: " + ", ".join(f"{t:.2f}" for t in trained_all) + ".",
        "",
        "gmpo step breakdown (median seconds over measured steps):",
        "",
        "| rollout prefill | rollout decode+sampling | reward | training forward | backward | optimizer | other (Python, batching, metrics) | step |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(f"{phases[p]:.2f}" for p in PHASES) + f" | {gm_med:.2f} |",
        "",
        "Per-step mean reward (learning curves):",
        "",
        "| step | " + " | ".join(str(i + 1) for i in range(len(gm_rewards))) + " |",
        "|---|" + "---:|" * len(gm_rewards),
        "| TRL | " + " | ".join(f"{r:.2f}" for r in tr_rewards) + " |",
        "| gmpo | " + " | ".join(f"{r:.2f}" for r in gm_rewards) + " |",
        "",
        "Per-step seconds: TRL " + ", ".join(f"{s:.1f}" for s in info["trl_s"]) + "; gmpo "
        + ", ".join(f"{h['s']:.1f}" for h in info["gmpo"]) + ".",
        "",
    ]
    return "\n".join(lines)


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_start = load_average()
    import trl  # noqa: F401  (fail early with a clear message when the bench extra is missing)

    model, tok, label = load_policy(args.model, device)
    n_params = sum(p.numel() for p in model.parameters())
    trl_model, trl_tok = copy.deepcopy(model), copy.deepcopy(tok)
    rss_models = rss_mb()
    with tempfile.TemporaryDirectory(prefix="step_vs_trl_") as tmp:
        cfg, overrides = gmpo_config(args, str(Path(tmp) / "gmpo"), device)
        side = GmpoSide(cfg, model, tok)
        batches = draw_prompts(cfg, tok, args.steps)
        first = [it["prompt_ids"] for it in batches[0]]
        trl_ids = trl_tok(text=[it["prompt_text"] for it in batches[0]])["input_ids"]
        if trl_ids != first:
            print("warning: TRL tokenises the rendered prompts differently from gmpo", file=sys.stderr)
        from gmpo.rollout.engine import eos_token_ids

        reward = TrlReward(cfg, cfg.rollout.max_new_tokens, eos_token_ids(trl_model, trl_tok))
        log = {"trl": [], "trl_reward": reward.means}
        trainer, precision = build_trl(args, cfg, trl_model, trl_tok, trl_dataset(batches), reward, device,
                                       str(Path(tmp) / "trl"), [_alternator(side, log)])
        torch.set_num_threads(args.threads)  # in case a library changed it
        print(f"{label}: {n_params / 1e6:.1f}M params on {device}; TRL {precision}; gmpo bf16 {side.trainer.bf16}; "
              f"{args.steps} steps each, {args.threads} threads", flush=True)
        trainer.train()
        ro = rollout_comparison(side, first, args.gen_reps)
        side.close()
    import trl as trl_mod

    info = {
        "argv": argv, "machine": machine(args.threads), "load_start": load_start, "load_end": load_average(),
        "model": label, "n_params": n_params, "device": device.type, "overrides": overrides,
        "gmpo_bf16": side.trainer.bf16, "trl_version": trl_mod.__version__, "trl_precision": precision,
        "trl_s": log["trl"], "trl_rewards": reward.means[: len(log["trl"])], "gmpo": side.history,
        "rollout": ro, "temperature": cfg.rollout.temperature, "peak_flops": side.trainer.peak_flops,
        "peak_dtype": "bf16" if side.trainer.bf16 else "fp32", "rss_peak": rss_mb(), "rss_models": rss_models,
        "trl_cuda_peak": log.get("trl_cuda_peak"), "gmpo_cuda_peak": log.get("gmpo_cuda_peak"),
        "trl_rss": log.get("trl_rss"), "gmpo_rss": log.get("gmpo_rss"),
    }
    text = report(args, info)
    print(text)
    if not args.no_append:
        path = Path(args.results)
        with path.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
