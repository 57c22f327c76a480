"""The study: storage, sampler, pruner, the worker loop, resume after an interruption, checkpoint tidying.

One ``gmpo tune`` process is the only Optuna client of its study (trials only write their run
directories), with K worker threads each driving one trial at a time (:mod:`gmpo.tune.trials`). The study
lives in an embedded file: Optuna's journal file by default (``<out>/study.journal``: an append-only log
with file locking, safe for several ``gmpo tune`` processes sharing one study, which SQLite handles badly),
or any Optuna storage URL (``sqlite:///study.db``). Both open in ``optuna-dashboard``.

Resume: the study is loaded if it exists (``load_if_exists``) and must have the same search space,
objective and recipe (else an error: use another ``--study``). ``--trials N`` is the study's total: finished
trials (complete, pruned, failed) count, so running the same command again after an interruption only
runs what is missing. A trial left RUNNING by a process that no longer exists (killed, Ctrl-C) is marked
failed as interrupted, left out of the count, and its parameters are queued again.

Reproducibility: the sampler is re-created before each trial with the seed (``--seed``, trial number), so
the same seed samples the same parameters for the same history: with one worker a repeated study
reproduces every parameter; with K workers the first ``--startup-trials`` (random) do, later TPE proposals
depend on which trials had finished when each was asked. A resumed study does not repeat earlier draws.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gmpo.config import ConfigError, from_dict, load_config, to_dict
from gmpo.tune.objective import DEFAULT_WEIGHTS, Outcome, combine
from gmpo.tune.space import Param, load_space, trial_dict, validate_space
from gmpo.tune.trials import EXECUTORS, Interrupted

PRUNERS = ("auto", "median", "hyperband", "wilcoxon", "patient", "none")
SAMPLERS = ("tpe", "random")


@dataclass
class TuneSettings:
    """Everything a study needs (the CLI maps its options onto these fields one to one)."""

    config: str | None
    space: str | dict
    trials: int
    overrides: list[str] = field(default_factory=list)
    workers: int = 1
    study: str | None = None
    storage: str | None = None
    out: str | None = None
    executor: str = "subprocess"
    threads: int = 0  # total CPU threads split between workers (0 = os.cpu_count())
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int | None = None  # TPE's random start (None: max(2, min(10, trials // 3)))
    pruner: str = "auto"
    pruner_startup: int = 3
    pruner_warmup: int = 0
    patience: int = 2
    weights: tuple[float, float] = DEFAULT_WEIGHTS
    multi_objective: bool = False
    enqueue: list[dict] = field(default_factory=list)
    keep_checkpoints: str = "best"
    report_only: bool = False


@dataclass
class Context:
    """The resolved pieces a study run shares between its worker threads."""

    settings: TuneSettings
    params: list[Param]
    base: dict
    out: Path
    study: Any
    threads_per_trial: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    log: Callable[[str], None] = print
    errors: list[BaseException] = field(default_factory=list)


def default_names(s: TuneSettings) -> tuple[str, Path, str]:
    """(study name, output directory, storage URL/path) with the documented defaults filled in."""
    name = s.study or (Path(s.config).stem if s.config else "gmpo")
    out = Path(s.out) if s.out else Path("runs") / "tune" / name
    return name, out, s.storage or str(out / "study.journal")


def make_storage(spec: str):
    """An Optuna storage: a URL with '://' (sqlite:///study.db, postgresql://...) is an RDB storage;
    'journal:PATH' or any other path is a journal file (created with its folder)."""
    import optuna

    if "://" in spec:
        if spec.startswith("sqlite:///"):
            Path(spec[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.storages.RDBStorage(spec)
    path = Path(spec[len("journal:"):] if spec.startswith("journal:") else spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # optuna < 4
        from optuna.storages import JournalFileStorage as JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_pruner(s: TuneSettings, eval_every: int, steps: int):
    """The pruner named by ``s.pruner`` ('auto' = median for one objective, none for two)."""
    import optuna

    name = s.pruner
    if s.multi_objective:
        if name not in ("auto", "none"):
            raise ConfigError(f"--pruner {name}: Optuna cannot prune multi-objective studies (Trial.report and "
                              "should_prune are single-objective only); drop --pruner or --multi-objective")
        return optuna.pruners.NopPruner()
    name = "median" if name == "auto" else name
    median = lambda: optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup,  # noqa: E731
                                                 n_warmup_steps=s.pruner_warmup)
    if name == "median":
        return median()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, eval_every), max_resource=steps, reduction_factor=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # both are marked experimental
        if name == "wilcoxon":
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
        if name == "patient":
            return optuna.pruners.PatientPruner(median(), patience=s.patience)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def make_sampler(s: TuneSettings, number: int):
    """The sampler for trial ``number``, seeded with (``s.seed``, ``number``)."""
    import optuna

    seed = (s.seed * 1_000_003 + number) % (2 ** 32)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "tpe":
        startup = s.startup_trials if s.startup_trials is not None else max(2, min(10, s.trials // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    raise ConfigError(f"--sampler {s.sampler!r}: choose one of {', '.join(SAMPLERS)}")


def _fingerprint(ctx_params: list[Param], s: TuneSettings, base: dict) -> dict:
    """What must match when a study is resumed (JSON-normalised: storages round-trip through JSON)."""
    recipe = json.loads(json.dumps(base, default=str))
    recipe["train"] = {k: v for k, v in recipe["train"].items() if k not in ("output_dir", "resume", "threads")}
    fp = {"space": {p.key: p.to_dict() for p in ctx_params},
          "objective": {"multi": s.multi_objective, "weights": list(s.weights)}, "recipe": recipe}
    return json.loads(json.dumps(fp))


def check_resume(study, fp: dict, name: str) -> None:
    """Record the fingerprint on a new study; on an existing one, refuse a different space/objective/recipe."""
    old = study.user_attrs.get("tune")
    if old is None:
        study.set_user_attr("tune", fp)
        return
    for part in ("space", "objective", "recipe"):
        if old.get(part) != fp[part]:
            raise ConfigError(f"study {name!r} exists with a different {part}; resume it with the same settings "
                              f"or start a new study (--study NEW_NAME)")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # recovery runs before this process starts any trial: one of ours is a leftover
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def interrupted_numbers(study) -> dict[str, str]:
    """{trial number (str): reason} of trials that were interrupted (failed, not counted, re-queued)."""
    return dict(study.user_attrs.get("interrupted", {}))


def mark_interrupted(study, trial_number: int, params: dict, reason: str) -> None:
    """Fail an abandoned trial, remember why, and queue its parameters again."""
    import optuna

    study.tell(trial_number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    notes = interrupted_numbers(study)
    notes[str(trial_number)] = reason
    study.set_user_attr("interrupted", notes)
    study.enqueue_trial(params, user_attrs={"retry_of": trial_number})


def recover_stale(study, log: Callable[[str], None]) -> int:
    """Trials RUNNING on this host whose process is gone: failed as interrupted and re-queued; the count."""
    import optuna

    host, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        w_host, _, w_pid = worker.rpartition(":")
        if worker and (w_host != host or _pid_alive(int(w_pid))):
            continue
        mark_interrupted(study, t.number, dict(t.params), f"interrupted (worker {worker or '?'} is gone)")
        log(f"[tune] trial {t.number} was interrupted (worker {worker or '?'} is gone): its parameters are queued again")
        n += 1
    return n


def counted(study) -> int:
    """Trials that count towards --trials: finished (not interrupted) and running ones."""
    import optuna

    S = optuna.trial.TrialState
    skip = interrupted_numbers(study)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING) and str(t.number) not in skip)


# ---------------------------------------------------------------------------------------------
# the loop


def trial_config(ctx: Context, number: int, values: dict):
    """The resolved config of trial ``number``: recipe + sampled values + the run-time keys tune owns."""
    data = trial_dict(ctx.base, values)
    tr = data.setdefault("train", {})
    tr["output_dir"] = str(ctx.out / "trials" / f"trial_{number:04d}")
    tr["resume"] = ""
    if "train.threads" not in values:
        tr["threads"] = ctx.threads_per_trial
    data.setdefault("eval", {})["at_end"] = True  # the objective needs the final held-out accuracy
    data.setdefault("log", {})["progress"] = False
    return from_dict(data)


def ask_trial(ctx: Context):
    """Under the lock: a new trial (queued parameters first) with every parameter sampled."""
    study = ctx.study
    study.sampler = make_sampler(ctx.settings, len(study.get_trials(deepcopy=False)))
    trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    values = {p.key: p.suggest(trial) for p in ctx.params}
    return trial, values


def _on_eval(ctx: Context, trial) -> Callable[[int, float, bool], bool]:
    """Report each intermediate held-out accuracy; ask the pruner (single objective, not the last step)."""
    def on_eval(step: int, acc: float, final: bool) -> bool:
        """Report; True = prune now."""
        if ctx.settings.multi_objective:
            return False
        trial.report(acc, step)
        return (not final) and trial.should_prune()
    return on_eval


def _tell(ctx: Context, trial, values: dict, outcome: Outcome, started: float, run_dir: str) -> None:
    import time

    import optuna

    S = optuna.trial.TrialState
    now = time.time()
    wall_s = now - started
    attrs = {**outcome.attrs(), "wall_s": round(wall_s, 2), "run_dir": run_dir, "started": started, "finished": now}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    tag = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    if outcome.state == "complete":
        if ctx.settings.multi_objective:
            ctx.study.tell(trial, [outcome.accuracy, outcome.stability])
            shown = f"accuracy {outcome.accuracy:.3f}, stability {outcome.stability:.3f}"
        else:
            value = combine(outcome.accuracy, outcome.stability, ctx.settings.weights)
            ctx.study.tell(trial, value)
            shown = f"value {value:.4f} (accuracy {outcome.accuracy:.3f}, stability {outcome.stability:.3f})"
        ctx.log(f"[tune] trial {trial.number} complete: {shown} [{tag}] {wall_s:.0f} s")
    elif outcome.state == "pruned":
        ctx.study.tell(trial, state=S.PRUNED)
        ctx.log(f"[tune] trial {trial.number} pruned at step {outcome.pruned_step} [{tag}]")
    else:
        ctx.study.tell(trial, state=S.FAIL)
        ctx.log(f"[tune] trial {trial.number} failed: {outcome.reason} [{tag}]")


def tidy_checkpoints(ctx: Context) -> None:
    """With keep_checkpoints='best': delete checkpoints/ of finished trials that are not (now) the best."""
    import optuna

    if ctx.settings.keep_checkpoints != "best":
        return
    S = optuna.trial.TrialState
    trials = ctx.study.get_trials(deepcopy=False)
    keep = {t.number for t in ctx.study.best_trials} if any(t.state == S.COMPLETE for t in trials) else set()
    root = (ctx.out / "trials").resolve()
    for t in trials:
        if t.state in (S.COMPLETE, S.PRUNED, S.FAIL) and t.number not in keep and t.user_attrs.get("run_dir"):
            ck = Path(t.user_attrs["run_dir"]).resolve() / "checkpoints"
            if ck.is_dir() and root in ck.parents:
                shutil.rmtree(ck, ignore_errors=True)


def _run_one(ctx: Context) -> bool:
    """Ask, train, tell one trial; False when the study has its --trials (or is stopping)."""
    import time

    with ctx.lock:
        if ctx.stop.is_set() or counted(ctx.study) >= ctx.settings.trials:
            return False
        trial, values = ask_trial(ctx)
    t0 = time.time()
    try:
        cfg = trial_config(ctx, trial.number, values)
    except ConfigError as e:  # a combination the space check could not see (e.g. inside an int range)
        outcome, run_dir = Outcome("fail", reason=f"invalid config: {e}"), ""
    else:
        run_dir = cfg.train.output_dir
        ctx.log(f"[tune] trial {trial.number} -> {run_dir}")
        try:
            outcome = EXECUTORS[ctx.settings.executor](cfg, _on_eval(ctx, trial), ctx.stop)
        except Interrupted:
            with ctx.lock:
                mark_interrupted(ctx.study, trial.number, values, "interrupted (the study was stopped)")
            return False
    with ctx.lock:
        _tell(ctx, trial, values, outcome, t0, run_dir)
        tidy_checkpoints(ctx)
    return True


def _worker(ctx: Context) -> None:
    try:
        while _run_one(ctx):
            pass
    except BaseException as e:  # noqa: BLE001 - surfaced by run_workers after the other workers stop
        ctx.errors.append(e)
        ctx.stop.set()


def run_workers(ctx: Context) -> None:
    """K worker threads until the study has --trials; Ctrl-C stops the children and marks them interrupted."""
    threads = [threading.Thread(target=_worker, args=(ctx,), name=f"tune-worker-{i}", daemon=True)
               for i in range(ctx.settings.workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        ctx.log("[tune] interrupted: stopping the running trials (they are retried when the study resumes)")
        ctx.stop.set()
        for t in threads:
            t.join()
        raise
    if ctx.errors:
        raise ctx.errors[0]


def prepare(s: TuneSettings, log: Callable[[str], None] = print) -> Context:
    """Validate everything (recipe, space, options) and open or create the study; no training yet."""
    if s.executor not in EXECUTORS:
        raise ConfigError(f"--executor {s.executor!r}: choose one of {', '.join(EXECUTORS)}")
    if s.trials < 1 or s.workers < 1:
        raise ConfigError(f"--trials and --workers must be >= 1 (got {s.trials}, {s.workers})")
    if s.workers > 1 and s.executor == "inprocess":
        raise ConfigError("--workers > 1 needs --executor subprocess: torch's thread count is per process, so "
                          "in-process trials run one at a time")
    if s.keep_checkpoints not in ("best", "all"):
        raise ConfigError(f"--keep-checkpoints {s.keep_checkpoints!r}: choose best or all")
    base_cfg = load_config(s.config, s.overrides)
    base = to_dict(base_cfg)
    params = validate_space(load_space(s.space) if not isinstance(s.space, dict) else s.space, base)
    for values in s.enqueue:
        validate_space({k: {"categorical": [v]} for k, v in values.items()}, base)
        unknown = set(values) - {p.key for p in params}
        if unknown:
            raise ConfigError(f"--enqueue: {', '.join(sorted(unknown))} not in the search space")
    pruner = make_pruner(s, base_cfg.eval.every, base_cfg.train.steps)
    if not s.multi_objective and s.pruner != "none" and not base_cfg.eval.every:
        log("[tune] warning: eval.every=0, so there is no intermediate held-out accuracy and the pruner cannot "
            "act; set eval.every=N (e.g. a quarter of train.steps)")
    name, out, storage = default_names(s)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "maximize"] if s.multi_objective else ["maximize"]
    study = optuna.create_study(study_name=name, storage=make_storage(storage), directions=directions,
                                pruner=pruner, sampler=make_sampler(s, 0), load_if_exists=True)
    check_resume(study, _fingerprint(params, s, base), name)
    total = s.threads or os.cpu_count() or 1
    ctx = Context(s, params, base, out, study, max(1, total // s.workers), log=log)
    log(f"[tune] study {name!r} in {storage}: {len(study.trials)} trial(s) so far; target {s.trials}; "
        f"{s.workers} worker(s) x {ctx.threads_per_trial} thread(s), {s.executor} trials")
    return ctx


def run_study(s: TuneSettings, log: Callable[[str], None] = print):
    """Validate, run the missing trials, write the outputs (:func:`gmpo.tune.report.write_outputs`)."""
    from gmpo.tune.report import write_outputs

    ctx = prepare(s, log)
    if not s.report_only:
        recover_stale(ctx.study, log)
        for values in s.enqueue:
            ctx.study.enqueue_trial(values, skip_if_exists=True)
        run_workers(ctx)
    return write_outputs(ctx)
