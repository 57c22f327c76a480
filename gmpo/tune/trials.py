"""Running one trial: a real gmpo training run in its own run directory, in-process or as a subprocess.

Both executors drive the same public step API and read the run directory the same way
(:func:`gmpo.tune.objective.analyse`); they differ in isolation:

- ``subprocess`` (default): ``gmpo train <run_dir>/tune_trial.yaml`` in a child process (its own session,
  ``train.threads`` = the tune's threads / workers, OMP/MKL threads to match; output in
  ``<run_dir>/tune_train.log``). The parent tails ``metrics.jsonl`` (:class:`gmpo.runs.files.JsonlTail`),
  reports each held-out accuracy to the pruner and terminates the child when it is pruned or has produced
  NaN. A crash of any kind (an exception, a segfault, the OOM killer) fails that trial only, and K
  children run at once with their threads split; torch's thread count is per process, so this is the
  only way to run trials in parallel with a fixed thread budget each.
- ``inprocess``: :class:`gmpo.train.GMPOTrainer` ``start()`` / ``step()`` / ``close()`` in the tune
  process, one trial at a time. No start-up cost per trial (the tests use it); an exception fails the
  trial, a hard crash ends the study (resume it: finished trials are kept).

``on_eval(step, accuracy, final) -> bool`` is called for every held-out accuracy after step 0; True
prunes the trial (ignored for the final evaluation).
"""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from gmpo.config import Config, save_config
from gmpo.runs.files import METRICS, JsonlTail
from gmpo.tune.objective import NONFINITE_KEYS, Outcome, analyse, is_finite

OnEval = Callable[[int, float, bool], bool]
TRIAL_CONFIG, TRIAL_LOG = "tune_trial.yaml", "tune_train.log"
# the child: die with the worker thread that started it (Linux PR_SET_PDEATHSIG), so killing the tune
# process never leaves orphan trainings; then exactly `gmpo train ARGS`
CHILD = (
    "import os, signal, sys\n"
    "try:\n"
    "    import ctypes; ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(os.environ.get('GMPO_TUNE_PARENT', os.getppid())):\n"
    "    sys.exit(3)\n"
    "from gmpo.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class Interrupted(Exception):
    """The study is stopping (Ctrl-C): the running trial is abandoned and will be retried on resume."""


def _nonfinite(rec: dict) -> bool:
    return any(k in rec and not is_finite(rec[k]) for k in NONFINITE_KEYS)


def run_inprocess(cfg: Config, on_eval: OnEval, stop: threading.Event | None = None) -> Outcome:
    """Train ``cfg`` with the step API in this process; stop early when pruned or on NaN."""
    from gmpo.train import GMPOTrainer

    trainer, pruned, error, stop_reason = None, None, "", None
    try:
        trainer = GMPOTrainer(config=cfg)
        trainer.start()
        while not trainer.done:
            if stop is not None and stop.is_set():
                raise Interrupted("study interrupted")
            m = trainer.step()
            if _nonfinite(m):
                break  # analyse() names the metric and step; no point training on
            if "eval/accuracy" in m and trainer.global_step > 0:
                if on_eval(trainer.global_step, float(m["eval/accuracy"]), trainer.done):
                    if not trainer.done:
                        pruned = trainer.global_step
                        break
        stop_reason = trainer.stop_reason
    except Interrupted:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a trial is that trial's verdict, not the study's
        error = f"{type(e).__name__}: {e}"
    finally:
        if trainer is not None:
            if not trainer.done:
                trainer.cfg.eval.at_end = False  # our own config object: no final evaluation of a stopped trial
            try:
                trainer.close()
            except Exception as e:  # noqa: BLE001
                error = error or f"closing the trainer failed: {type(e).__name__}: {e}"
            del trainer
            gc.collect()
    return analyse(cfg.train.output_dir, stop_reason, pruned_step=pruned, error=error)


def _exit_text(code: int, log_path: Path) -> str:
    """Why a child exited: its status (or signal) and the last informative line of its log."""
    what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    last = ""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    for ln in reversed(lines):
        if "error" in ln.lower() or "Error" in ln or "Exception" in ln:
            last = ln
            break
    if not last and lines:
        last = lines[-1]
    return f"gmpo train {what}" + (f": {last[:300]}" if last else "")


def _stop_reason_from_log(log_path: Path) -> str | None:
    try:
        for ln in log_path.read_text(errors="replace").splitlines():
            if ln.startswith("stopped early: "):
                return ln[len("stopped early: "):].strip()
    except OSError:
        pass
    return None


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_subprocess(cfg: Config, on_eval: OnEval, stop: threading.Event | None = None, poll_s: float = 0.25) -> Outcome:
    """Train ``cfg`` with ``gmpo train`` in a child process, tailing its metrics for pruning and NaN."""
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path, log_path = run_dir / TRIAL_CONFIG, run_dir / TRIAL_LOG
    save_config(cfg, cfg_path)
    threads = str(max(cfg.train.threads, 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "GMPO_TUNE_PARENT": str(os.getpid())}
    tail, pruned, fail_fast, interrupted = JsonlTail(run_dir / METRICS), None, False, False
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", str(cfg_path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                code = proc.poll()  # before reading: every line written before the exit is read below
                for rec in tail.read():
                    if _nonfinite(rec):
                        fail_fast = True
                    elif "eval/accuracy" in rec and rec.get("step", 0) > 0 and pruned is None:
                        step = int(rec["step"])
                        final = step >= cfg.train.steps
                        if on_eval(step, float(rec["eval/accuracy"]), final) and not final and code is None:
                            pruned = step
                if code is not None:
                    break
                if pruned is not None or fail_fast:
                    _terminate(proc)
                    break
                if stop is not None and stop.is_set():
                    interrupted = True
                    _terminate(proc)
                    break
                time.sleep(poll_s)
        finally:
            _terminate(proc)
    if interrupted:
        raise Interrupted("study interrupted")
    code = proc.returncode
    error = "" if code == 0 or pruned is not None or fail_fast else _exit_text(code, log_path)
    return analyse(run_dir, _stop_reason_from_log(log_path), pruned_step=pruned, error=error)


EXECUTORS = {"subprocess": run_subprocess, "inprocess": run_inprocess}
