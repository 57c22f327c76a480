"""Where metrics go: a tqdm progress bar, metrics.jsonl, TensorBoard, Weights & Biases, samples.jsonl.

Every sink takes ``log(step, metrics)`` with host floats and ``close()``; :func:`make_sinks` builds the
set a :class:`gmpo.config.LogConfig` asks for. Optional backends import lazily and fail with a message
that says what to install.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from gmpo.registry import Registry
from gmpo.runs.files import METRICS, truncate_jsonl


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.4g}"
    return f"{v:.2e}"


def summary_line(step: int, total: int, m: dict[str, float]) -> str:
    """A compact one-line summary of a step's metrics for the console."""
    parts = [f"step {step}/{total}"]
    for key, label in (("reward/mean", "reward"), ("eval/accuracy", "acc"), ("loss/value", "loss"),
                       ("grad/norm", "gnorm"), ("policy/entropy", "ent"), ("rollout/len_mean", "len"),
                       ("perf/step_s", "s")):
        if key in m:
            parts.append(f"{label} {_fmt(m[key])}")
    return " | ".join(parts)


class ProgressSink:
    """tqdm bar over rollout steps (ETA from tqdm) with a compact postfix and periodic summary lines."""

    def __init__(self, total: int, initial: int = 0, print_every: int = 1, enabled: bool = True):
        self.total, self.print_every = total, max(0, print_every)
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Advance the bar on training steps; print a summary every `print_every` steps."""
        if "reward/mean" not in metrics:  # an eval-only record (step 0)
            if "eval/accuracy" in metrics:
                self.write(f"step {step}: held-out accuracy {metrics['eval/accuracy']:.3f}")
            return
        if self.bar is not None:
            post = {k: _fmt(metrics[m]) for k, m in (("r", "reward/mean"), ("loss", "loss/value"),
                                                      ("len", "rollout/len_mean")) if m in metrics}
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        if self.print_every and step % self.print_every == 0:
            self.write(summary_line(step, self.total, metrics))

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonlSink:
    """Appends one JSON object per record to a file, flushed after each write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write ``{"step": step, **metrics}``."""
        self.f.write(json.dumps({"step": step, **metrics}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoardSink:
    """Scalars to TensorBoard event files (``torch.utils.tensorboard``)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package
            raise RuntimeError("log.tensorboard=true needs TensorBoard: pip install tensorboard") from e
        self.w = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One scalar per scalar metric at global step `step` (vector metrics such as histograms are skipped)."""
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.w.add_scalar(k, v, step)
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class WandbSink:
    """Metrics to a Weights & Biases run (imported only when enabled)."""

    def __init__(self, project: str, run_dir: str | Path, config: dict, resume: bool = False):
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError("log.wandb=true needs Weights & Biases: pip install wandb (or pip install gmpo[wandb])") from e
        self.wandb = wandb
        self.run = wandb.init(project=project, dir=str(run_dir), config=config, name=Path(run_dir).name,
                              resume="allow" if resume else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """``wandb.log`` at `step`."""
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """Fans every record out to a list of sinks."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for s in self.sinks:
            s.log(step, metrics)

    def write(self, text: str) -> None:
        """A console line (through the progress bar when there is one)."""
        for s in self.sinks:
            if isinstance(s, ProgressSink):
                s.write(text)
                return
        print(text, flush=True)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


SINKS = Registry("telemetry sink")  # name -> builder(log_cfg, run_dir, start_step, config); meta: flag (LogConfig bool)


@SINKS.add("jsonl", flag="jsonl")
def _jsonl(log_cfg, run_dir: Path, start_step: int, config: dict):
    """metrics.jsonl in the run directory (truncated to the resume step)"""
    truncate_jsonl(run_dir / METRICS, start_step)
    return JsonlSink(run_dir / METRICS)


@SINKS.add("tensorboard", flag="tensorboard")
def _tensorboard(log_cfg, run_dir: Path, start_step: int, config: dict):
    """TensorBoard event files in <run_dir>/tb"""
    return TensorBoardSink(run_dir / "tb")


@SINKS.add("wandb", flag="wandb")
def _wandb(log_cfg, run_dir: Path, start_step: int, config: dict):
    """a Weights & Biases run"""
    return WandbSink(log_cfg.wandb_project, run_dir, config, resume=start_step > 0)


def make_sinks(log_cfg, run_dir: Path, total_steps: int, start_step: int, config: dict) -> Sinks:
    """The progress line plus every registered sink whose ``log.<flag>`` is on, writing under `run_dir`."""
    sinks: list[Any] = [ProgressSink(total_steps, start_step, log_cfg.print_every, log_cfg.progress)]
    for name in SINKS:
        if getattr(log_cfg, SINKS.meta(name)["flag"]):
            sinks.append(SINKS.get(name)(log_cfg, run_dir, start_step, config))
    return Sinks(sinks)


class SamplesWriter:
    """samples.jsonl: a few completions per step with their prompt, rewards and advantage."""

    def __init__(self, path: str | Path, per_step: int, start_step: int = 0):
        self.per_step = per_step
        self.sink = None
        if per_step > 0:
            truncate_jsonl(path, start_step)
            self.sink = JsonlSink(path)

    def write(self, step: int, records: list[dict]) -> None:
        """Write up to `per_step` of `records` (already chosen by the caller)."""
        if self.sink is None:
            return
        for r in records[: self.per_step]:
            self.sink.log(step, r)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
