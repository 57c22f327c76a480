"""The training loop: rollout -> rewards -> advantages -> ppo_epochs passes of mini-batch updates.

Read top to bottom: :meth:`Trainer.train` runs steps; :meth:`Trainer.train_step` is one step:

1. ``_collect``: sample ``prompts_per_step`` prompts x ``group_size`` completions, score them (truncated
   completions get 0 when ``rollout.truncated_reward == "zero"``; DAPO's soft overlong penalty), and with
   dynamic sampling keep only groups whose rewards differ, sampling more rounds until the batch is full
   (at most ``rollout.max_sampling_rounds`` extra rounds, then it trains on what it has and logs it).
2. reference log-probs (only when ``algorithm.beta > 0``), KL shaping of the reward (``kl_in == "reward"``),
   advantages.
3. ``_update``: ``ppo_epochs`` passes over shuffled mini-batches (``train.mini_batch_size`` completions),
   each an optimizer step accumulated over micro-batches (see :mod:`gmpo.update`).

There is no branch on an algorithm name: :func:`gmpo.algorithms.resolve` turns the config into an
``AlgorithmSpec`` (loss and its arguments, reduction, advantage mode, dynamic sampling, overlong).

Metrics (DESIGN.md section 4) are collected as tensors and copied to the host once per step. Notes on
definitions: ``reward/*`` and ``rollout/*`` cover every completion sampled in the step (all dynamic-sampling
rounds), after truncation zeroing and the overlong penalty, before KL shaping; ``policy/kl`` is the k3 KL
to the reference policy when one exists (beta > 0), else the k3 estimate between the current and the old
(sampling) policy; ``perf/tokens_per_s`` is completion tokens sampled per second of the whole step;
``perf/mfu`` is the training phase's model FLOP/s (6 x params x tokens for forward+backward, 2 x params x
tokens for no-grad forwards) over a matmul peak measured once at start-up on the device in the compute dtype.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from gmpo import algorithms, checkpoint, models, ops, perf, scoring, seeding
from gmpo.advantages import compute_advantages
from gmpo.config import Config, save_config, to_dict
from gmpo.hooks import SKIP, HookList
from gmpo.rollout import SamplingParams, make_engine
from gmpo.telemetry.collector import Reducer, StepMetrics, measure_peak_flops, quantiles
from gmpo.update import OldLogp, PolicyForward, accumulate_minibatch, no_grad_logp


def resolve_bf16(setting: str, device: torch.device) -> bool:
    """train.bf16 'auto' | 'true' | 'false' -> whether the forward runs under bf16 autocast."""
    return models.bf16_supported(device) if setting == "auto" else setting == "true"


class LRSchedule:
    """Linear warm-up over `warmup` optimizer steps, then constant or cosine decay to `min_ratio` x lr."""

    def __init__(self, warmup: int, total: int, kind: str = "constant", min_ratio: float = 0.0):
        self.warmup, self.total, self.kind, self.min_ratio = warmup, max(total, 1), kind, min_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """RL post-training of a causal LM as configured by `cfg` (a :class:`gmpo.config.Config`).

    ``model``/``tokenizer`` default to ``gmpo.models.load_model(cfg.model.name_or_path)``; ``hooks`` are
    added after the guard (``cfg.guard.enabled``). Hook API: ``step``, ``run_dir``, ``snapshot()``,
    ``restore(snap)``, ``save_checkpoint()``, ``scale_lr(f)``, ``request_stop(reason)``, ``events``.
    """

    def __init__(self, cfg: Config, model=None, tokenizer=None, hooks: list | None = None):
        from gmpo.data import PromptLoader, build_datasets
        from gmpo.rewards import RewardRunner
        from gmpo.telemetry.stability import StabilityTracker

        self.cfg, tc = cfg, cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        seeding.seed_everything(tc.seed)
        self.run_dir = Path(tc.output_dir)
        self.device = models.resolve_device(tc.device)
        self.bf16 = resolve_bf16(tc.bf16, self.device)
        self.spec = algorithms.resolve(cfg.algorithm, cfg.rollout.max_new_tokens, cfg.rollout.dynamic_sampling)
        if model is None or tokenizer is None:
            model, tokenizer = models.load_model(cfg.model.name_or_path, dtype=cfg.model.dtype, device=self.device,
                                                 cache_dir=cfg.model.cache_dir,
                                                 trust_remote_code=cfg.model.trust_remote_code)
        self.tokenizer = tokenizer
        self.model, self.ref_model = self._prepare_model(model.to(self.device))
        self.lora = cfg.model.lora.enabled
        self.engine = make_engine(cfg.rollout.backend, self.model, tokenizer, bf16=self.bf16,
                                  decode_batch_size=cfg.rollout.decode_batch_size)
        self.forward = PolicyForward(cfg.rollout.temperature, self.bf16)
        self.train_ds, self.eval_ds = build_datasets(cfg.data, tc.seed)
        self.loader = PromptLoader(self.train_ds, tokenizer, cfg.data, cfg.rollout.prompts_per_step, tc.seed)
        self.rewards = RewardRunner(cfg.rewards, errors=tc.reward_errors)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.model.parameters())
        n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
        self.mini_batch_size = tc.mini_batch_size or n
        self.updates_per_batch = tc.ppo_epochs * math.ceil(n / self.mini_batch_size)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay,
                                           **perf.adamw_options(self.params))  # fused kernel where supported
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, LRSchedule(
            cfg.optim.warmup_steps, tc.steps * self.updates_per_batch, cfg.optim.schedule, cfg.optim.min_lr_ratio))
        self.tracker = StabilityTracker()
        self.hooks = HookList()
        if cfg.guard.enabled:
            from gmpo.guard import Guard

            self.hooks.add(Guard(cfg.guard))
        for h in hooks or []:
            self.hooks.add(h)
        self.step, self.events = 0, 0
        self.eval_before: float | None = None
        self.eval_after: float | None = None
        self.stop_reason: str | None = None
        self._restored = False
        self._saved_step = -1
        self._eval_step = -1
        self.resumed_from = checkpoint.find_checkpoint(tc.resume, self.run_dir)
        if self.resumed_from is not None:
            checkpoint.load(self, self.resumed_from)
            self._saved_step = self.step

    # -- setup ---------------------------------------------------------------------------------------

    def _prepare_model(self, model):
        """Gradient checkpointing, LoRA and the reference policy (only when beta != 0)."""
        mc = self.cfg.model
        if mc.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ref = None
        if self.spec.needs_reference and not mc.lora.enabled:
            ref = copy.deepcopy(model).eval().requires_grad_(False)  # frozen initial policy
        if mc.lora.enabled:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=mc.lora.r, lora_alpha=mc.lora.alpha, lora_dropout=mc.lora.dropout,
                                                     target_modules=list(mc.lora.target_modules), task_type="CAUSAL_LM"))
        return model, ref

    # -- hook API ------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """In-memory deep copy of weights, optimizer, scheduler, RNG, data position and step."""
        return checkpoint.snapshot(self)

    def restore(self, snap: dict) -> None:
        """Return exactly to `snap` (guard events keep counting); abandons the rest of a running step."""
        events = self.events
        checkpoint.restore(self, snap)
        self.events = events
        self._restored = True

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state under ``run_dir/checkpoints``; returns its directory."""
        path = checkpoint.save(self, self.run_dir / "checkpoints", self.cfg.train.keep_checkpoints)
        self._saved_step = self.step
        return path

    def load_last_checkpoint(self) -> tuple[dict, Path] | None:
        """The newest checkpoint on disk as a snapshot for :meth:`restore` (None if there is none)."""
        found = checkpoint.checkpoint_dirs(self.run_dir / "checkpoints")
        if not found:
            return None
        current = self.snapshot()
        checkpoint.load(self, found[-1], hooks=False)  # the hooks' own state (e.g. rollback counts) stays live
        snap = self.snapshot()
        checkpoint.restore(self, current)
        return snap, found[-1]

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate (now and for the rest of the schedule) by `factor`."""
        for g in self.optimizer.param_groups:
            g["lr"] *= factor
        self.scheduler.base_lrs = [b * factor for b in self.scheduler.base_lrs]

    def request_stop(self, reason: str) -> None:
        """Stop after the current step."""
        self.stop_reason = reason

    def extra_state(self) -> dict:
        """Trainer counters saved with checkpoints and snapshots."""
        return {"events": self.events, "eval_before": self.eval_before}

    def load_extra_state(self, state: dict) -> None:
        self.events = int(state.get("events", 0))
        self.eval_before = state.get("eval_before")

    # -- the loop ------------------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Greedy held-out accuracy (first reward function > 0.5) on the eval split."""
        ec = self.cfg.eval
        return scoring.heldout_accuracy(self.engine, self.tokenizer, self.eval_ds, self.cfg.data, self.cfg.rewards[0],
                                        ec.max_new_tokens or self.cfg.rollout.max_new_tokens, self.cfg.rollout.stop,
                                        self.cfg.rollout.decode_batch_size)

    def run_benchmarks(self) -> dict[str, float]:
        """Extra math benchmarks (``eval.benchmarks``) via :func:`gmpo.eval.evaluate`, as eval/<name>."""
        if not self.cfg.eval.benchmarks:
            return {}
        from gmpo.eval import evaluate

        ec, dc = self.cfg.eval, self.cfg.data
        acc = evaluate(self.model, self.tokenizer, list(ec.benchmarks), data_dir=ec.data_dir, limit=ec.limit,
                       max_new_tokens=ec.max_new_tokens or self.cfg.rollout.max_new_tokens, template=dc.template,
                       engine=self.engine, system_prompt=dc.system_prompt, bf16=self.bf16, seed=self.cfg.train.seed)
        return {f"eval/{name}": v for name, v in acc.items()}

    def train(self) -> dict:
        """Run until ``train.steps`` (or a stop request); returns a summary dict."""
        from gmpo.telemetry.sinks import SamplesWriter, make_sinks

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        self.sinks = make_sinks(cfg.log, self.run_dir, cfg.train.steps, self.step, to_dict(cfg))
        self.samples = SamplesWriter(self.run_dir / "samples.jsonl", cfg.log.samples_per_step, self.step)
        self.peak_flops = measure_peak_flops(self.device, torch.bfloat16 if self.bf16 else torch.float32)
        t_start = time.perf_counter()
        try:
            self.hooks.on_train_start(self)
            if cfg.eval.at_start and self.step == 0 and self.eval_before is None:
                self.eval_before = self.evaluate()
                self.sinks.log(0, {"eval/accuracy": self.eval_before, **self.run_benchmarks()})
            while self.step < cfg.train.steps and self.stop_reason is None:
                attempted = self.step + 1
                metrics = self.train_step(attempted)
                if not self._restored:
                    self.step = attempted
                last = self.step >= cfg.train.steps or self.stop_reason is not None
                every = cfg.eval.every
                if not self._restored and ((every and attempted % every == 0) or (last and cfg.eval.at_end)):
                    metrics["eval/accuracy"] = self.evaluate()
                    metrics.update(self.run_benchmarks())
                    self.eval_after, self._eval_step = metrics["eval/accuracy"], self.step
                self.sinks.log(attempted, metrics)
                self.hooks.on_step_end(self, attempted, metrics)
                se = cfg.train.save_every
                if not self._restored and se and self.step % se == 0 and self.step < cfg.train.steps:
                    self.save_checkpoint()
            if cfg.eval.at_end and self.step > 0 and self._eval_step != self.step:  # stopped by a hook at step end
                self.eval_after, self._eval_step = self.evaluate(), self.step
                self.sinks.log(self.step, {"eval/accuracy": self.eval_after})
            if self.step > 0 and self._saved_step != self.step:
                self.save_checkpoint()
        finally:
            self.sinks.close()
            self.samples.close()
        return {"steps": self.step, "eval_before": self.eval_before, "eval_after": self.eval_after,
                "stop_reason": self.stop_reason, "wall_s": time.perf_counter() - t_start, "run_dir": str(self.run_dir)}

    def train_step(self, step: int) -> dict[str, float]:
        """One rollout step (sample, score, update); returns its host metrics."""
        self._restored = False  # set by restore() when a hook rolls back during this step
        t0 = time.perf_counter()
        batch, seen, roll = self._collect(step)
        t1 = time.perf_counter()
        sm = StepMetrics()
        batch.share_prompt = self.cfg.train.share_prompt_forward and not self.cfg.model.gradient_checkpointing
        flops = self._prepare(batch, sm)
        flops += self._update(batch, step, sm)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        self._rollout_metrics(sm, seen, batch, roll)
        gen_tokens = float(sum(int(b.lengths.sum()) for b in seen))
        sm.update({"perf/step_s": t2 - t0, "perf/rollout_s": roll["gen_s"], "perf/reward_s": roll["reward_s"],
                   "perf/train_s": t2 - t1, "perf/tokens_per_s": gen_tokens / max(t2 - t0, 1e-9),
                   "perf/rollout_tokens_per_s": gen_tokens / max(roll["gen_s"], 1e-9),
                   "perf/mfu": flops / max(t2 - t1, 1e-9) / self.peak_flops,
                   "guard/events": self.events, "optim/lr": self.optimizer.param_groups[0]["lr"]})
        metrics = sm.resolve()  # the single host transfer of the step
        # a step a hook rolled back does not enter the (restored) stability window
        metrics.update(self.tracker.compute() if self._restored else self.tracker.update(metrics))
        self.samples.write(step, scoring.sample_records(batch, self.cfg.log.samples_per_step))
        return metrics

    # -- 1. rollout and scoring -------------------------------------------------------------------------

    def _collect(self, step: int):
        """Sample and score rounds of prompts; with dynamic sampling keep informative groups until full."""
        rc, G, P = self.cfg.rollout, self.cfg.rollout.group_size, self.cfg.rollout.prompts_per_step
        spec = self.spec
        overlong = None
        if spec.overlong:
            overlong = lambda lengths: algorithms.overlong_penalty(  # noqa: E731
                lengths, rc.max_new_tokens, spec.overlong_buffer, spec.overlong_penalty)
        rounds = 1 + (rc.max_sampling_rounds if spec.dynamic_sampling else 0)
        seen, kept, roll = [], [], {"gen_s": 0.0, "reward_s": 0.0, "errors": 0, "rounds": 0}
        for rnd in range(rounds):
            items = self.loader.next_batch()
            params = SamplingParams(n=G, max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                                    top_k=rc.top_k, stop=list(rc.stop), entropy=True, seed=seeding.derive_seed(self.cfg.train.seed, "rollout", step, rnd))
            t = time.perf_counter()
            b = scoring.sample(self.engine, items, params, self.tokenizer.pad_token_id, self.device)
            t2 = time.perf_counter()
            roll["errors"] += scoring.score(b, self.rewards, zero_truncated=rc.truncated_reward == "zero", overlong=overlong)
            roll["gen_s"] += t2 - t
            roll["reward_s"] += time.perf_counter() - t2
            roll["rounds"] += 1
            seen.append(b)
            if not spec.dynamic_sampling:
                kept = [b]
                break
            keep = algorithms.informative_groups(b.rewards, G)
            if bool(keep.any()):
                kept.append(b.select_groups(keep))
            if sum(len(k.items) for k in kept) >= P:
                break
        if kept:
            batch = scoring.concat(kept)
            if len(batch.items) > P:
                batch = batch.first_groups(P)
        else:  # dynamic sampling found no informative group: train on the last round (zero advantages)
            batch = seen[-1]
        roll["groups"] = len(batch.items)
        return batch, seen, roll

    def _prepare(self, batch, sm: StepMetrics) -> float:
        """Reference log-probs (beta != 0), KL shaping of the reward, advantages; returns FLOPs spent."""
        spec, flops = self.spec, 0.0
        if spec.needs_reference:
            batch.ref_logp = torch.zeros_like(batch.rollout_logp)
            rows = torch.arange(batch.n)
            self.model.eval()
            if self.ref_model is not None:
                tokens = no_grad_logp(self.ref_model, self.forward, batch, rows, self.cfg.train.micro_batch_size, batch.ref_logp)
            else:  # LoRA: the base model is the adapter-free policy
                with self.model.disable_adapter():
                    tokens = no_grad_logp(self.model, self.forward, batch, rows, self.cfg.train.micro_batch_size, batch.ref_logp)
            flops += perf.training_flops(self.n_params, 0, no_grad_tokens=tokens)
            if spec.kl_in == "reward":  # r_i -= beta * sum_t KL_t (sequence KL at sampling time)
                kl = ops.masked_sum(ops.kl_penalty(batch.rollout_logp, batch.ref_logp, spec.kl_estimator), batch.mask, -1)
                batch.rewards = batch.rewards - spec.beta * kl.float().cpu()
                sm.add("reward/kl_penalty", (spec.beta * kl).mean())
        adv = compute_advantages(batch.rewards, batch.group_size, spec.advantage, spec.adv_eps)  # on the host
        batch.advantages_host = adv.advantages  # (N,) for samples.jsonl without a device sync
        batch.advantages = adv.advantages.to(self.device)  # (N,)
        return flops

    def _rollout_metrics(self, sm: StepMetrics, seen: list, batch, roll: dict) -> None:
        """reward/*, rollout/* over every completion sampled this step."""
        G = self.cfg.rollout.group_size
        r = torch.cat([b.rewards for b in seen])  # (N_all,) on the host
        lengths = torch.cat([b.lengths for b in seen]).float()
        sm.update({"reward/mean": r.mean(), "reward/std": r.std() if r.numel() > 1 else torch.zeros(()),
                   "reward/frac_zero_std": 1.0 - algorithms.informative_groups(r, G).float().mean(),
                   "rollout/len_mean": lengths.mean(), "rollout/len_min": lengths.min(), "rollout/len_max": lengths.max(),
                   "rollout/truncated_frac": torch.cat([b.truncated for b in seen]).float().mean(),
                   "rollout/sampling_rounds": roll["rounds"], "rollout/groups_kept": roll["groups"],
                   "reward/errors": roll["errors"]})
        for name in seen[0].per_fn:
            sm.add(f"reward/{name}/mean", torch.cat([b.per_fn[name] for b in seen]).mean())

    # -- 2. policy update --------------------------------------------------------------------------------

    def _update(self, batch, step: int, sm: StepMetrics) -> float:
        """ppo_epochs passes over shuffled mini-batches; returns the training FLOPs spent."""
        tc, spec = self.cfg.train, self.spec
        N, micro = batch.n, tc.micro_batch_size
        old = OldLogp(batch.rollout_logp, batch.mask, tc.recompute_old_logp)
        flops = 0.0
        if tc.recompute_old_logp == "always":  # one no-grad forward before the first update
            self.model.eval()
            flops += perf.training_flops(self.n_params, 0, no_grad_logp(self.model, self.forward, batch, torch.arange(N), micro, old.values))
        self.model.train()
        red = Reducer()
        gen = torch.Generator().manual_seed(seeding.derive_seed(tc.seed, "shuffle", step))
        # order inside a mini-batch: by prompt length, then prompt (groups stay together), then completion length
        key = (torch.tensor([len(p) for p in batch.prompt_ids]) * (N + 1) + torch.arange(N) // batch.group_size) \
            * (batch.mask.shape[1] + 1) + batch.lengths
        # rows that cannot move the gradient (advantage exactly 0, no KL term in the loss) run no forward
        inert = None
        if tc.skip_zero_advantage and spec.zero_advantage_inert:
            inert = batch.advantages_host == 0  # (N,) on the host: no device sync
        sm.add("perf/rows_trained_frac", 1.0 - inert.float().mean() if inert is not None else torch.ones(()))
        if batch.entropy is not None:  # the sampling policy's entropy over every completion token of the batch
            sm.add("policy/entropy", ops.masked_mean(batch.entropy, batch.mask))
        want_entropy = batch.entropy is None  # else measure it in the first epoch's training forwards
        n_updates = 0
        for epoch in range(tc.ppo_epochs):
            for rows in torch.randperm(N, generator=gen).split(self.mini_batch_size):
                rows = rows[torch.argsort(key[rows], stable=True)]  # similar rows share micro-batches
                loss, tokens, ratio = accumulate_minibatch(
                    self.model, self.forward, batch, rows, micro, spec.loss_fn, spec.loss_kwargs, spec.reduction,
                    spec.norm_len, old, batch.ref_logp, red, want_entropy=want_entropy and epoch == 0, inert=inert)
                flops += perf.training_flops(self.n_params, tokens)
                if tokens == 0:  # every row inert: a zero gradient, so AdamW still steps (decay, momentum)
                    for p in self.params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                n_updates += 1
                if n_updates == 1 and self.updates_per_batch > 1 and tc.recompute_old_logp == "auto" and not old.rollout_agrees():
                    stale = old.stale_rows()  # rows the next updates will see with a moved policy
                    if inert is not None:  # inert rows never run: their old log-probs are never read
                        stale = stale[~inert.to(stale.device)[stale]]
                    if stale.numel():
                        self.model.eval()
                        flops += perf.training_flops(self.n_params, 0, no_grad_logp(self.model, self.forward, batch, stale, micro, old.values))
                        self.model.train()
                moved = self._optimizer_step(step, loss, ratio, red, sm)
                old.policy_moved = old.policy_moved or moved
                if self._restored:  # a hook rolled the trainer back: this step's remaining updates are void
                    break
            if self._restored:
                break
        sm.update(red.results())
        sm.update(old.gap_metrics())
        ratios = red.samples("ratio/tokens")
        if ratios is not None and ratios.numel():
            q = quantiles(ratios, [0.01, 0.99])
            sm.add("ratio/token_p01", q[0])
            sm.add("ratio/token_p99", q[1])
        return flops

    def _optimizer_step(self, step: int, loss: torch.Tensor, ratio: dict, red: Reducer, sm: StepMetrics) -> bool:
        """Clip, ask the hooks, step optimizer and scheduler; returns whether the weights changed."""
        max_norm = self.cfg.optim.max_grad_norm
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf"))  # pre-clip norm
        red.mean("loss/value", loss)
        red.mean("grad/norm", gnorm)
        verdict = "ok"
        if self.hooks:  # building host stats costs a sync: only when someone listens
            vals = torch.stack([loss.detach().float(), gnorm.detach().float(), ratio["max"], ratio["min"]]).tolist()
            stats = {"loss": vals[0], "grad_norm": vals[1], "ratio/token_max": vals[2], "ratio/token_min": vals[3],
                     "nonfinite": float(not (math.isfinite(vals[0]) and math.isfinite(vals[1])))}
            verdict = self.hooks.before_optimizer_step(self, step, stats)
        if verdict == SKIP or self._restored:
            self.optimizer.zero_grad(set_to_none=True)
            red.mean("optim/skipped", torch.ones(()))
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.engine.sync_weights(self.model)
        red.mean("optim/skipped", torch.zeros(()))
        return True
