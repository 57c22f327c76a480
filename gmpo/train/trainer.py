"""The trainer: builds the parts, then composes the phases of a step; it never branches on an algorithm name.

A rollout step (:meth:`GMPOTrainer.step`) runs, in order:

1. collect (:mod:`gmpo.train.collect`): sample ``prompts_per_step`` x ``group_size`` completions, score them,
   dynamic sampling;
2. prepare (:mod:`gmpo.train.prepare`): reference log-probs (beta > 0 only), KL shaping, advantages;
3. update (:mod:`gmpo.train.update`): ``ppo_epochs`` passes over shuffled mini-batches, each accumulated
   over micro-batches;
4. optimize (:mod:`gmpo.train.optimize`): per mini-batch, clip, ask the hooks, step the optimizer;

then held-out evaluation when due, logging, ``on_step_end`` hooks, and at most one restore, carried out here
between steps (:meth:`_restore`). :func:`gmpo.algo.presets.resolve` turns the config into the
``AlgorithmSpec`` every phase reads.

Metrics (DESIGN.md section 4) are collected as tensors and copied to the host once per step. Definitions:
``reward/*`` and ``rollout/*`` cover every completion sampled in the step (all dynamic-sampling rounds),
after truncation zeroing and the overlong penalty, before KL shaping; ``policy/kl`` is the k3 KL to the
reference policy when one exists (beta > 0), else the k3 estimate between the current and the old (sampling)
policy; ``perf/tokens_per_s`` is completion tokens sampled per second of the whole step; ``perf/mfu`` is
the training phase's model FLOP/s over a matmul peak measured once at start-up.

Under torchrun (``WORLD_SIZE`` > 1) the trainer joins the process group (:mod:`gmpo.train.dist`): each rank
samples its share of the step's groups, the update has global-batch semantics, metrics are reduced over
ranks and rank 0's are broadcast (so every rank's hooks see the same values and take the same verdicts);
only rank 0 writes the run directory (config, sinks, samples, alerts, checkpoints); evaluation is sharded.
With ``train.parallel=fsdp2`` (:mod:`gmpo.train.fsdp`) the policy (and reference) are sharded, the rollout
engine and evaluation decode with a full replica refreshed after every optimizer step (:meth:`_sync_rollout`),
and every rank writes its shards of a checkpoint.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from gmpo import models, perf, seeding
from gmpo.algo import presets
from gmpo.config import Config, save_config, to_dict
from gmpo.runs import checkpoint
from gmpo.runs.files import record_model_source
from gmpo.telemetry.collector import StepMetrics, measure_peak_flops
from gmpo.train import build, dist as distributed, fsdp
from gmpo.train.collect import Collector, rollout_metrics, sample_records
from gmpo.train.forward import PolicyForward
from gmpo.train.hooks import HookList, Restore
from gmpo.train.optimize import build_optimizer, build_scheduler, optimizer_step, schedule_length
from gmpo.train.prepare import prepare
from gmpo.train.update import UpdateSettings, update


class GMPOTrainer:
    """RL post-training of a causal LM with GMPO or a GRPO-family objective.

    model: a ``PreTrainedModel`` or a hub name / local path / ``smollm2-135m-instruct`` (default: the
    config's ``model.name_or_path``); tokenizer: required with a model object; config: a
    :class:`gmpo.config.Config` (see :func:`gmpo.config.make_config` for keyword overrides);
    train_dataset / eval_dataset: ``datasets.Dataset`` objects with the configured question and answer
    columns, or names/paths (default: the config's ``data`` section); reward_funcs: callables
    ``f(prompts, completions, **columns) -> list[float]``, registered names, or RewardSpecs (default: the
    config's ``rewards``); hooks: added after the guard (``config.guard.enabled``).

    ``train()`` runs to ``train.steps`` and returns a summary; ``step()`` runs one rollout step and
    returns its metrics (the run directory and sinks are opened on first use; call ``close()`` after).
    """

    def __init__(self, model=None, tokenizer=None, config: Config | None = None, *, train_dataset=None,
                 eval_dataset=None, reward_funcs=None, hooks: list | None = None):
        cfg = config if config is not None else Config()
        self.cfg, tc = cfg, cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        seeding.seed_everything(tc.seed)
        self.run_dir = Path(tc.output_dir)
        self.device = models.resolve_device(tc.device)
        self.dist = distributed.setup(self.device, tc.dist_timeout, tc.parallel)  # None for one process (not fsdp2)
        if self.dist is not None:
            self.device = self.dist.device
        self.bf16 = build.resolve_bf16(tc.bf16, self.device)
        self.spec = presets.resolve(cfg.algorithm, cfg.rollout.max_new_tokens, cfg.rollout.dynamic_sampling)
        model, self.tokenizer, self.model_source = build.policy_and_tokenizer(model, tokenizer, cfg.model, self.device)
        model, ref = build.prepare_model(model.to(self.device), cfg.model, self.spec.needs_reference)
        self.model, self.ref_model, self.replica = fsdp.wrap(tc.parallel, model, ref, self.dist, self.bf16)
        self.rollout_model = self.replica.module if self.replica is not None else self.model  # what decodes
        self.lora = cfg.model.lora.enabled
        self.engine = build.engine(cfg.rollout, self.rollout_model, self.tokenizer, self.bf16)
        self.forward = PolicyForward(cfg.rollout.temperature, self.bf16)
        self.train_ds, self.eval_ds = build.datasets(cfg.data, train_dataset, eval_dataset)
        self.loader = build.loader(self.train_ds, self.tokenizer, cfg)
        self.rewards, self.heldout_rewards = build.rewards(cfg, reward_funcs)
        self.collect = Collector(self.engine, self.loader, self.rewards, self.spec, cfg.rollout, tc.seed,
                                 self.tokenizer.pad_token_id, self.device, dist=self.dist)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.model.parameters())
        n = cfg.rollout.prompts_per_step * cfg.rollout.group_size
        mini = tc.mini_batch_size or n
        self.updates = UpdateSettings(tc.ppo_epochs, mini, tc.micro_batch_size, tc.recompute_old_logp,
                                      tc.skip_zero_advantage and self.spec.zero_advantage_inert, tc.seed,
                                      tc.ppo_epochs * math.ceil(n / mini), dist=self.dist)
        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, tc.steps * self.updates.updates_per_batch)
        self.tracker = build.stability_tracker()
        self.hooks = HookList(build.guard_hooks(cfg.guard) + list(hooks or []))
        self.global_step, self.events, self.rollbacks = 0, 0, 0
        self.lr_scale = 1.0  # product of every rollback's lr factor so far (survives restores)
        self.eval_before: float | None = None
        self.eval_after: float | None = None
        self.stop_reason: str | None = None
        self._pending: Restore | None = None
        self._started = self._closed = False
        self._saved_step = self._eval_step = -1
        self._t_start = 0.0
        self.resumed_from = checkpoint.find_checkpoint(tc.resume, self.run_dir)
        if self.resumed_from is not None:
            checkpoint.load(self, self.resumed_from)
            self._sync_rollout()
            self._saved_step = self.global_step
            self._fit_schedule()

    # -- hook API ------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """In-memory deep copy of weights, optimizer, scheduler, RNG, data position and step."""
        return checkpoint.snapshot(self)

    @property
    def is_main(self) -> bool:
        """True in a single process and on rank 0 (the rank that writes the run directory)."""
        return self.dist is None or self.dist.is_main

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state under ``run_dir/checkpoints``; returns its directory.

        Several ranks: every rank calls it at the same point; rank 0 writes (weights, optimizer and every
        other state are identical on all ranks, so the checkpoint resumes at any world size) and the others
        wait for it; under fsdp2 every rank writes its shards (:func:`gmpo.runs.checkpoint.save_sharded`)."""
        root = self.run_dir / "checkpoints"
        if self.replica is not None:
            path = checkpoint.save_sharded(self, root, self.cfg.train.keep_checkpoints, self.dist)
        elif self.is_main:
            path = checkpoint.save(self, root, self.cfg.train.keep_checkpoints)
        else:
            path = root / f"step_{self.global_step:06d}"
        if self.dist is not None:
            self.dist.barrier("checkpoint save")
        self._saved_step = self.global_step
        return path

    def load_last_checkpoint(self) -> tuple[dict, Path] | None:
        """The newest checkpoint on disk as a snapshot for a :class:`Restore` (None if there is none)."""
        found = checkpoint.checkpoint_dirs(self.run_dir / "checkpoints")
        if not found:
            return None
        current = self.snapshot()
        checkpoint.load(self, found[-1], hooks=False)  # the hooks' own state (e.g. rollback counts) stays live
        snap = self.snapshot()
        checkpoint.restore(self, current)
        return snap, found[-1]

    def request_stop(self, reason: str) -> None:
        """Stop after the current step."""
        self.stop_reason = reason

    def extra_state(self) -> dict:
        """Trainer counters saved with checkpoints and snapshots."""
        return {"events": self.events, "eval_before": self.eval_before, "lr_scale": self.lr_scale,
                "rollbacks": self.rollbacks}

    def load_extra_state(self, state: dict) -> None:
        """Inverse of :meth:`extra_state`."""
        self.events = int(state.get("events", 0))
        self.eval_before = state.get("eval_before")
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))

    # -- evaluation ------------------------------------------------------------------------------------

    def evaluate(self) -> float:
        """Greedy held-out accuracy (first reward function > 0.5) on the eval split."""
        from gmpo.eval.heldout import heldout_accuracy

        ec, rc = self.cfg.eval, self.cfg.rollout
        return heldout_accuracy(self.engine, self.tokenizer, self.eval_ds, self.cfg.data, self.heldout_rewards,
                                ec.max_new_tokens or rc.max_new_tokens, rc.stop, rc.decode_batch_size, dist=self.dist)

    def run_benchmarks(self) -> dict[str, float]:
        """Extra math benchmarks (``eval.benchmarks``) via :func:`gmpo.eval.evaluate`, as eval/<name>."""
        if not self.cfg.eval.benchmarks:
            return {}
        if self.dist is not None:  # rank 0 runs them; every rank gets its numbers
            return self.dist.broadcast_object(self._benchmarks() if self.is_main else None, what="benchmarks")
        return self._benchmarks()

    def _benchmarks(self) -> dict[str, float]:
        from gmpo.eval import evaluate

        ec, dc = self.cfg.eval, self.cfg.data
        acc = evaluate(self.rollout_model, self.tokenizer, list(ec.benchmarks), data_dir=ec.data_dir, limit=ec.limit,
                       max_new_tokens=ec.max_new_tokens or self.cfg.rollout.max_new_tokens, template=dc.template,
                       engine=self.engine, system_prompt=dc.system_prompt, bf16=self.bf16, seed=self.cfg.train.seed)
        return {f"eval/{name}": v for name, v in acc.items()}

    # -- the loop --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the run directory and sinks, run ``on_train_start`` hooks and the initial evaluation (once)."""
        if self._started:
            return
        from gmpo.telemetry.sinks import SamplesWriter, Sinks, make_sinks

        cfg = self.cfg
        self._started, self._t_start = True, time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        main = self.is_main  # only rank 0 writes config, metrics, samples
        if main:
            save_config(cfg, self.run_dir / "config.yaml")
            record_model_source(self.run_dir, self.model_source)
        self.sinks = make_sinks(cfg.log, self.run_dir, cfg.train.steps, self.global_step, to_dict(cfg)) if main else Sinks([])
        self.samples = SamplesWriter(self.run_dir / "samples.jsonl", cfg.log.samples_per_step if main else 0,
                                     self.global_step)
        self.peak_flops = measure_peak_flops(self.device, torch.bfloat16 if self.bf16 else torch.float32)
        self.hooks.on_train_start(self)
        if cfg.eval.at_start and self.global_step == 0 and self.eval_before is None:
            self.eval_before = self.evaluate()
            self.sinks.log(0, {"eval/accuracy": self.eval_before, **self.run_benchmarks()})

    @property
    def done(self) -> bool:
        """True once ``train.steps`` steps are complete or a stop was requested."""
        return self.global_step >= self.cfg.train.steps or self.stop_reason is not None

    def step(self) -> dict[str, float]:
        """Run one rollout step (with its evaluation, logging, hooks and checkpoint when due); its metrics.

        A step a hook rolled back is logged under its number, then the trainer returns to the snapshot, so
        ``global_step`` does not advance and the next call retries from there with a fresh rollout seed.
        """
        self.start()
        cfg, attempted = self.cfg, self.global_step + 1
        metrics, verdict = self._run_step(attempted)
        if verdict is None:
            self.global_step = attempted
            last = self.done
            every = cfg.eval.every
            if (every and attempted % every == 0) or (last and cfg.eval.at_end):
                metrics["eval/accuracy"] = self.evaluate()
                metrics.update(self.run_benchmarks())
                self.eval_after, self._eval_step = metrics["eval/accuracy"], self.global_step
        self.sinks.log(attempted, metrics)
        end = self.hooks.on_step_end(self, attempted, metrics)
        verdict = verdict or (end if isinstance(end, Restore) else None)
        if verdict is not None:
            self._restore(verdict)
        elif cfg.train.save_every and self.global_step % cfg.train.save_every == 0 and not self.done:
            self.save_checkpoint()
        return metrics

    def _restore(self, r: Restore) -> None:
        """Carry out a hook's Restore: the one place the trainer goes back to a snapshot.

        The learning rate becomes the snapshot's x (every rollback's factor so far, this one included) /
        (the factors already applied when the snapshot was taken), so successive rollbacks compound:
        lr x f, x f^2, x f^3. Guard events and the rollback count stay live.
        """
        events, scale, rollbacks = self.events, self.lr_scale * r.lr_factor, self.rollbacks + 1
        checkpoint.restore(self, r.snapshot)
        factor = scale / self.lr_scale
        for g in self.optimizer.param_groups:
            g["lr"] *= factor
        self.scheduler.base_lrs = [b * factor for b in self.scheduler.base_lrs]
        self.events, self.lr_scale, self.rollbacks = events, scale, rollbacks
        self._sync_rollout()

    def _sync_rollout(self) -> None:
        """Hand the current weights to the rollout engine; under fsdp2 first gather them into the full
        replica it decodes with (a collective: every rank calls this at the same point)."""
        if self.replica is not None:
            self.replica.refresh(self.model)
        self.engine.sync_weights(self.rollout_model)

    def close(self, finish: bool = True) -> dict:
        """Final evaluation and checkpoint when due (``finish``), close the sinks; returns the run summary.

        ``finish=False`` (after an error mid-step) only closes the sinks: a state caught mid-step is never
        evaluated or saved as a checkpoint.
        """
        cfg = self.cfg
        if self._started and not self._closed:
            self._closed = True
            try:
                if finish and cfg.eval.at_end and self.global_step > 0 and self._eval_step != self.global_step:
                    self.eval_after, self._eval_step = self.evaluate(), self.global_step  # stopped by a hook
                    self.sinks.log(self.global_step, {"eval/accuracy": self.eval_after})
                if finish and self.global_step > 0 and self._saved_step != self.global_step:
                    self.save_checkpoint()
            finally:
                self.sinks.close()
                self.samples.close()
        return {"steps": self.global_step, "eval_before": self.eval_before, "eval_after": self.eval_after,
                "stop_reason": self.stop_reason, "wall_s": time.perf_counter() - self._t_start,
                "run_dir": str(self.run_dir), "rollbacks": self.rollbacks}

    def train(self) -> dict:
        """Run until ``train.steps`` (or a stop request); returns a summary dict."""
        self.start()
        try:
            while not self.done:
                self.step()
        except BaseException:
            self.close(finish=False)  # no final eval or checkpoint of a state caught mid-step
            raise
        return self.close()

    def _run_step(self, step: int) -> tuple[dict[str, float], Restore | None]:
        """collect -> prepare -> update/optimize for rollout step `step`; (host metrics, a pending Restore)."""
        t0 = time.perf_counter()
        batch, seen, rounds = self.collect(step, attempt=self.rollbacks)
        t1 = time.perf_counter()
        sm = StepMetrics()
        # the shared-prompt layout calls the model twice per micro-batch: not with FSDP2's lockstep forwards
        batch.share_prompt = self.cfg.train.share_prompt_forward and not self.cfg.model.gradient_checkpointing \
            and self.replica is None
        flops, extra = prepare(batch, self.spec, self.model, self.ref_model, self.forward,
                               self.cfg.train.micro_batch_size, self.n_params, self.device, dist=self.dist)
        sm.update(extra)
        consult = (lambda stats: self.hooks.before_optimizer_step(self, step, stats)) if self.hooks else None
        sync = self._sync_rollout
        optimize = lambda loss, ratio, red: optimizer_step(  # noqa: E731
            self.params, self.optimizer, self.scheduler, self.cfg.optim.max_grad_norm, consult, sync, loss, ratio, red)
        f, verdict = update(self.model, self.forward, batch, self.spec, self.updates, step, optimize, self.n_params, sm)
        flops += f
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        sm.update(rollout_metrics(seen, rounds, self.cfg.rollout.group_size, self.dist))
        gen_tokens = rounds.tokens
        sm.update({"perf/step_s": t2 - t0, "perf/rollout_s": rounds.gen_s, "perf/reward_s": rounds.reward_s,
                   "perf/train_s": t2 - t1, "perf/tokens_per_s": gen_tokens / max(t2 - t0, 1e-9),
                   "perf/rollout_tokens_per_s": gen_tokens / max(rounds.gen_s, 1e-9),
                   "perf/mfu": flops / max(t2 - t1, 1e-9) / self.peak_flops, "rollout/retry": self.rollbacks,
                   "guard/events": self.events, "optim/lr": self.optimizer.param_groups[0]["lr"]})
        metrics = sm.resolve(self.dist)  # the single host transfer of the step
        if self.dist is not None:  # rank 0's view everywhere: hooks, tracker and guard decide alike on every rank
            metrics = self.dist.broadcast_object(metrics, what="step metrics")
        restore = verdict if isinstance(verdict, Restore) else None
        # a step a hook rolls back does not enter the (restored) stability window
        metrics.update(self.tracker.compute() if restore else self.tracker.update(metrics))
        self.samples.write(step, sample_records(batch, self.cfg.log.samples_per_step, rounds.seeds[0]))
        return metrics, restore

    def _fit_schedule(self) -> None:
        """After a resume: rebuild the LR schedule for this config's length if the checkpoint's differs."""
        want = self.cfg.train.steps * self.updates.updates_per_batch
        have = schedule_length(self.scheduler)
        if have != want:
            sched = self.scheduler
            for lam in sched.lr_lambdas:
                lam.total = max(want, 1)
            for g, base, lam in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                g["lr"] = base * lam(sched.last_epoch)  # continue on the new schedule from this position
            print(f"[gmpo] resumed from {self.resumed_from} (step {self.global_step}): the checkpoint's LR schedule "
                  f"spans {have} optimizer steps, this config's train.steps={self.cfg.train.steps} needs {want}: "
                  f"schedule rebuilt for {want}", flush=True)
