"""Supervised fine-tuning on (prompt, response) pairs: the loss on response tokens only (``gmpo sft``).

Data: ``sft.dataset`` (a local file or hub name; the sft split of ``gmpo cai generate`` fits as is) with
``sft.prompt_field`` / ``sft.response_field`` columns, read and validated by :mod:`gmpo.data.sources`. With a
chat template (``data.template: chat``) the sequence is the conversation [user: prompt, assistant: response]
through :meth:`gmpo.data.prompts.PromptEncoder.encode_messages`: the prompt part is the conversation up to
and including the assistant generation prompt, the response part is the rest up to and including the
end-of-turn token. Other templates: the rendered prompt, then the response and EOS.

Loss (the usual SFT objective, as Hugging Face models compute it with label -100 on prompt and padding):
``L = - sum_{t in response tokens of the batch} log p(x_t | x_<t) / (number of response tokens in the batch)``.
Micro-batches (``train.micro_batch_size``) each add their token sum divided by the whole batch's token count,
so accumulation gives exactly the full-batch value.

Batches: ``sft.batch_size`` sequences per optimizer step; with ``sft.bucket`` every epoch's seeded permutation
is cut into windows of ``bucket_window`` batches, each window sorted by length and cut into batches, and the
batch order shuffled (less padding, same data per epoch). Everything else is shared with ``gmpo train``:
model loading and LoRA (:mod:`gmpo.train.build`), AdamW + schedule + the guarded optimizer step
(:mod:`gmpo.train.optimize`), the guard hooks, checkpoints and resume (:mod:`gmpo.runs.checkpoint`), the
telemetry sinks. ``train.steps`` counts optimizer steps. ``<output_dir>/final`` links to the last checkpoint's
loadable model (its ``merged/`` under LoRA).
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from gmpo import models, seeding
from gmpo.config import Config, save_config, to_dict
from gmpo.data.errors import DataError
from gmpo.runs import checkpoint
from gmpo.runs.files import record_model_source
from gmpo.telemetry.collector import Reducer
from gmpo.train import build
from gmpo.train.hooks import HookList, Restore
from gmpo.train.optimize import build_optimizer, build_scheduler, optimizer_step


def encode_pair(encoder, prompt: str, response: str, max_tokens: int) -> tuple[list[int], int]:
    """(token ids of prompt + response, number of prompt tokens); the response is cut to fit `max_tokens`."""
    tok = encoder.tokenizer
    if encoder.template == "chat":
        user = [{"role": "user", "content": prompt}]
        p_text, p_ids = encoder.encode_messages(user, add_generation_prompt=True)
        full, _ = encoder.encode_messages(user + [{"role": "assistant", "content": response}], add_generation_prompt=False)
        if not full.startswith(p_text):
            raise DataError("the chat template renders the assistant turn without repeating the prompt text: "
                            "use data.template=plain or a custom '{prompt}' template for this tokenizer")
        r_ids = tok(full[len(p_text):], add_special_tokens=False)["input_ids"]
        eos = tok.eos_token_id
        if eos in r_ids:  # the turn ends at the end-of-turn token (what follows it is template whitespace)
            r_ids = r_ids[: len(r_ids) - r_ids[::-1].index(eos)]
    else:
        p_ids = encoder.encode(prompt)
        r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if len(p_ids) >= max_tokens:
        raise ValueError(f"the prompt has {len(p_ids)} tokens, sft.max_seq_tokens={max_tokens} leaves no room for the response")
    return list(p_ids) + list(r_ids)[: max_tokens - len(p_ids)], len(p_ids)


def load_pairs(cfg: Config, tokenizer) -> tuple[list[tuple[list[int], int]], list[tuple[list[int], int]]]:
    """(train, eval) encoded pairs of ``sft.dataset``; eval is the last ``sft.eval_size`` rows."""
    from gmpo.data.prompts import PromptEncoder
    from gmpo.data.sources import load_prompts

    sc = cfg.sft
    if not sc.dataset:
        raise DataError("sft.dataset is empty: give a (prompt, response) file, e.g. the sft.jsonl of `gmpo cai generate`")
    ds = load_prompts(sc.dataset, sc.split, "", sc.prompt_field, sc.response_field)
    encoder = PromptEncoder(tokenizer, cfg.data.template, cfg.data.system_prompt)
    pairs = []
    for i, row in enumerate(ds):
        try:
            pairs.append(encode_pair(encoder, row["prompt"], str(row["answer"]), sc.max_seq_tokens))
        except ValueError as e:
            raise DataError(f"{sc.dataset}: row {i + 1}: {e}") from None
    if sc.eval_size < 0 or sc.eval_size >= len(pairs):
        raise DataError(f"sft.eval_size={sc.eval_size} must be in [0, {len(pairs) - 1}] for {len(pairs)} pairs")
    cut = len(pairs) - sc.eval_size
    return pairs[:cut], pairs[cut:]


class SFTBatches:
    """Endless seeded batches of example indices (length-bucketed or not) with exact resume (epoch, position)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket: bool, window: int):
        self.lengths, self.bs, self.seed, self.bucket, self.window = lengths, max(1, batch_size), seed, bucket, max(1, window)
        self.epoch, self.position = 0, 0
        self._batches = self._plan(0)

    def _plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)).tolist()
        if not self.bucket:
            return [order[s:s + self.bs] for s in range(0, len(order), self.bs)]
        span = self.bs * self.window
        batches = []
        for w in range(0, len(order), span):
            chunk = sorted(order[w:w + span], key=lambda i: (self.lengths[i], i))
            batches += [chunk[s:s + self.bs] for s in range(0, len(chunk), self.bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self) -> list[int]:
        """The next batch of example indices (the next epoch's plan starts when one runs out)."""
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        self.position += 1
        return self._batches[self.position - 1]

    def state_dict(self) -> dict:
        """Where the stream is (the plan of an epoch is a pure function of seed and epoch)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, s: dict) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        self.epoch, self.position = int(s["epoch"]), int(s["position"])
        self._batches = self._plan(self.epoch)


class _NoTracker:
    """SFT has no rollout stability windows; checkpoints still expect a tracker state."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, s: dict) -> None:
        pass


def collate(pairs: list[tuple[list[int], int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded; labels are -100 on prompt tokens and padding."""
    T = max(len(ids) for ids, _ in pairs)
    inp = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(pairs), T), dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), T), -100, dtype=torch.long)  # (B, T)
    for b, (ids, n_prompt) in enumerate(pairs):
        inp[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
        labels[b, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
    return inp.to(device), mask.to(device), labels.to(device)


def response_nll_sum(model, inp: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Sum over response tokens of -log p(x_t | x_<t) (a 0-d float32 tensor; the caller divides)."""
    ctx = torch.autocast(inp.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        logits = model(input_ids=inp, attention_mask=mask).logits  # (B, T, V)
    shift = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(T-1), V): position t predicts token t+1
    return torch.nn.functional.cross_entropy(shift, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")


def n_targets(pairs: list[tuple[list[int], int]]) -> int:
    """Response tokens that are loss targets (a sequence's first token is never predicted)."""
    return sum(len(ids) - max(n_prompt, 1) for ids, n_prompt in pairs)


class SFTTrainer:
    """Supervised fine-tuning with the parts of ``gmpo train`` (see the module docstring).

    ``SFTTrainer(config, model=None, tokenizer=None, hooks=None)``; ``train() -> summary`` (steps, loss,
    eval_loss_before, eval_loss_after, stop_reason, wall_s, run_dir, final_model), or ``start()`` / ``step()`` /
    ``close()``. Duck-types the trainer that checkpoints, snapshots and guard hooks expect.
    """

    def __init__(self, config: Config, model=None, tokenizer=None, hooks: list | None = None):
        cfg, tc = config, config.train
        self.cfg = cfg
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        seeding.seed_everything(tc.seed)
        self.run_dir, self.device = Path(tc.output_dir), models.resolve_device(tc.device)
        self.bf16 = build.resolve_bf16(tc.bf16, self.device)
        model, self.tokenizer, self.model_source = build.policy_and_tokenizer(model, tokenizer, cfg.model, self.device)
        self.model, _ = build.prepare_model(model.to(self.device), cfg.model, needs_reference=False)
        self.lora, self.is_main = cfg.model.lora.enabled, True
        self.train_pairs, self.eval_pairs = load_pairs(cfg, self.tokenizer)
        sc = cfg.sft
        self.loader = SFTBatches([len(x) for x, _ in self.train_pairs], sc.batch_size, tc.seed, sc.bucket, sc.bucket_window)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, tc.steps)
        self.tracker = _NoTracker()
        self.hooks = HookList(build.guard_hooks(cfg.guard) + list(hooks or []))
        self.global_step = self.events = self.rollbacks = 0
        self.lr_scale, self.stop_reason = 1.0, None
        self.eval_before = self.eval_after = None
        self._started = self._closed = False
        self._saved_step, self._t0 = -1, 0.0
        self.resumed_from = checkpoint.find_checkpoint(tc.resume, self.run_dir)
        if self.resumed_from is not None:
            checkpoint.load(self, self.resumed_from)
            self._saved_step = self.global_step

    # -- what checkpoints and hooks call -----------------------------------------------------------------

    def snapshot(self) -> dict:
        """In-memory copy of weights and training state (for guard rollbacks)."""
        return checkpoint.snapshot(self)

    def save_checkpoint(self) -> Path:
        """A checkpoint under ``run_dir/checkpoints``; ``run_dir/final`` is pointed at its loadable model."""
        path = checkpoint.save(self, self.run_dir / "checkpoints", self.cfg.train.keep_checkpoints)
        self._saved_step = self.global_step
        target = os.path.relpath(path / "merged" if self.lora else path, self.run_dir)
        link, tmp = self.run_dir / "final", self.run_dir / ".final.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
        return path

    def load_last_checkpoint(self):
        """The newest checkpoint on disk as (snapshot, path), or None."""
        found = checkpoint.checkpoint_dirs(self.run_dir / "checkpoints")
        if not found:
            return None
        current = self.snapshot()
        checkpoint.load(self, found[-1], hooks=False)
        snap = self.snapshot()
        checkpoint.restore(self, current)
        return snap, found[-1]

    def request_stop(self, reason: str) -> None:
        """Stop after the current step."""
        self.stop_reason = reason

    def extra_state(self) -> dict:
        """Counters saved with checkpoints."""
        return {"events": self.events, "lr_scale": self.lr_scale, "rollbacks": self.rollbacks,
                "eval_before": self.eval_before}

    def load_extra_state(self, state: dict) -> None:
        """Inverse of :meth:`extra_state`."""
        self.events, self.rollbacks = int(state.get("events", 0)), int(state.get("rollbacks", 0))
        self.lr_scale, self.eval_before = float(state.get("lr_scale", 1.0)), state.get("eval_before")

    # -- the loop ----------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True at ``train.steps`` optimizer steps or after a stop request."""
        return self.global_step >= self.cfg.train.steps or self.stop_reason is not None

    def evaluate(self) -> float | None:
        """Token-mean response loss on the held-out pairs (None without them)."""
        if not self.eval_pairs:
            return None
        mb, total, n = max(1, self.cfg.train.micro_batch_size), torch.zeros((), device=self.device), 0
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            for s in range(0, len(self.eval_pairs), mb):
                chunk = self.eval_pairs[s:s + mb]
                total += response_nll_sum(self.model, *collate(chunk, self.tokenizer.pad_token_id, self.device), self.bf16)
                n += n_targets(chunk)
        self.model.train(was)
        return float(total) / max(n, 1)

    def start(self) -> None:
        """Open the run directory and sinks, run ``on_train_start`` hooks and the first evaluation."""
        if self._started:
            return
        from gmpo.telemetry.sinks import make_sinks

        self._started, self._t0 = True, time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        record_model_source(self.run_dir, self.model_source)
        self.sinks = make_sinks(self.cfg.log, self.run_dir, self.cfg.train.steps, self.global_step, to_dict(self.cfg))
        self.model.train()
        self.hooks.on_train_start(self)
        if self.cfg.eval.at_start and self.global_step == 0 and self.eval_pairs:
            self.eval_before = self.evaluate()
            self.sinks.log(0, {"eval/loss": self.eval_before})

    def step(self) -> dict:
        """One optimizer step on the next batch (micro-batched); logs and returns its metrics."""
        self.start()
        t0, step = time.perf_counter(), self.global_step + 1
        batch = [self.train_pairs[i] for i in self.loader.next_batch()]
        n_tok = max(n_targets(batch), 1)
        red, mb = Reducer(), max(1, self.cfg.train.micro_batch_size)
        total = torch.zeros((), device=self.device)
        for s in range(0, len(batch), mb):  # each micro-batch adds its share of the batch's token mean
            loss = response_nll_sum(self.model, *collate(batch[s:s + mb], self.tokenizer.pad_token_id, self.device),
                                    self.bf16) / n_tok
            loss.backward()
            total += loss.detach()
        one = torch.ones((), device=self.device)
        consult = (lambda stats: self.hooks.before_optimizer_step(self, step, stats)) if self.hooks else None
        _, verdict = optimizer_step(self.params, self.optimizer, self.scheduler, self.cfg.optim.max_grad_norm,
                                    consult, lambda: None, total, {"max": one, "min": one}, red)
        metrics = {k: float(v) for k, v in red.results().items()}
        pad = sum(max(len(x) for x, _ in batch) - len(x) for x, _ in batch) / (len(batch) * max(len(x) for x, _ in batch))
        dt = time.perf_counter() - t0
        metrics.update({"sft/response_tokens": n_tok, "sft/sequences": len(batch), "sft/pad_frac": pad,
                        "sft/epoch": self.loader.epoch, "perf/step_s": dt, "perf/tokens_per_s": n_tok / max(dt, 1e-9),
                        "optim/lr": self.optimizer.param_groups[0]["lr"], "guard/events": self.events})
        restore = verdict if isinstance(verdict, Restore) else None
        if restore is None:
            self.global_step = step
            every = self.cfg.eval.every
            if self.eval_pairs and ((every and step % every == 0) or (self.done and self.cfg.eval.at_end)):
                metrics["eval/loss"] = self.eval_after = self.evaluate()
        self.sinks.log(step, metrics)
        end = self.hooks.on_step_end(self, step, metrics)
        restore = restore or (end if isinstance(end, Restore) else None)
        if restore is not None:
            self._restore(restore)
        elif self.cfg.train.save_every and self.global_step % self.cfg.train.save_every == 0 and not self.done:
            self.save_checkpoint()
        return metrics

    def _restore(self, r: Restore) -> None:
        """Go back to a hook's snapshot; the learning rate compounds every rollback's factor (as ``gmpo train``)."""
        events, scale, rollbacks = self.events, self.lr_scale * r.lr_factor, self.rollbacks + 1
        checkpoint.restore(self, r.snapshot)
        factor = scale / self.lr_scale
        for g in self.optimizer.param_groups:
            g["lr"] *= factor
        self.scheduler.base_lrs = [b * factor for b in self.scheduler.base_lrs]
        self.events, self.lr_scale, self.rollbacks = events, scale, rollbacks

    def close(self, finish: bool = True) -> dict:
        """Final checkpoint when due (``finish``), close the sinks; the run summary."""
        if self._started and not self._closed:
            self._closed = True
            try:
                if finish and self.global_step > 0 and self._saved_step != self.global_step:
                    self.save_checkpoint()
            finally:
                self.sinks.close()
        final = self.run_dir / "final"
        return {"steps": self.global_step, "eval_loss_before": self.eval_before, "eval_loss_after": self.eval_after,
                "stop_reason": self.stop_reason, "wall_s": time.perf_counter() - self._t0, "run_dir": str(self.run_dir),
                "final_model": str(final) if final.exists() else None, "rollbacks": self.rollbacks}

    def train(self) -> dict:
        """Run to ``train.steps`` optimizer steps (or a stop request); the summary."""
        self.start()
        try:
            while not self.done:
                self.step()
        except BaseException:
            self.close(finish=False)
            raise
        return self.close()


__all__ = ["SFTBatches", "SFTTrainer", "collate", "encode_pair", "load_pairs", "n_targets", "response_nll_sum"]
