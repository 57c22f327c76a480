"""Search hyperparameters with Optuna: every trial is a real gmpo training run, pruned on held-out accuracy.

    gmpo tune CONFIG.yaml --space SPACE.yaml --trials N [--workers K] [--study NAME] [--storage URL]
              [key.path=value ...]

The recipe (with its overrides) is the base; each trial sets the search space's keys (SPACE.yaml, e.g.
``optim.lr: {log_uniform: [1.0e-6, 1.0e-4]}``; log_uniform / uniform / int / categorical over any config
key) and trains in <out>/trials/trial_NNNN/. The space is checked against the config schema before any
trial runs. Objective: 0.7 x final held-out accuracy + 0.3 x stability (1 / (1 + coefficient of
variation of the per-step gradient norm)); --weights changes the mix, --multi-objective keeps both and
reports the Pareto front. Held-out accuracy every eval.every steps goes to the pruner. A trial that
raises, crashes, is stopped by the guard or produces NaN is recorded as failed with its reason.

The study is resumable: run the same command again and only missing trials run (--trials is the total).
Outputs: <out>/best_config.yaml (run it with gmpo train), <out>/summary.json, <out>/report/ (trials.md,
figures, index.html that works offline). Browse the study live: optuna-dashboard <out>/study.journal
(or the --storage URL).
"""
from __future__ import annotations

import argparse
import sys

from gmpo.config import ConfigError


def _add_options(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--space", help="(required) search-space YAML: config key -> {log_uniform|uniform|int|categorical: ...}")
    a("--trials", type=int, help="(required) total trials of the study (finished ones from earlier runs count)")
    a("--workers", type=int, default=1, help="trials run at once, each a subprocess with --threads/K threads (default 1)")
    a("--threads", type=int, default=0, help="CPU threads split between the workers (default: all cores)")
    a("--study", default=None, help="study name (default: the config file's stem)")
    a("--storage", default=None,
      help="Optuna storage: a journal file path (default <out>/study.journal, safe for several processes) or a "
           "URL such as sqlite:///study.db")
    a("--out", default=None, help="output directory: trials/, report/, best_config.yaml (default runs/tune/<study>)")
    a("--executor", choices=("subprocess", "inprocess"), default="subprocess",
      help="subprocess: each trial is `gmpo train` in a child process (crash-isolated, parallel); inprocess: the "
           "step API in this process, one trial at a time (no start-up cost) (default subprocess)")
    a("--sampler", choices=("tpe", "random"), default="tpe", help="parameter sampler (default tpe)")
    a("--seed", type=int, default=0, help="sampler seed: the same seed samples the same parameters (default 0)")
    a("--startup-trials", type=int, default=None,
      help="random trials before TPE models the space (default max(2, min(10, trials // 3)))")
    a("--pruner", choices=("auto", "median", "hyperband", "wilcoxon", "patient", "none"), default="auto",
      help="pruner on the intermediate held-out accuracy: auto = median (none for --multi-objective, which Optuna "
           "cannot prune); patient = median with --patience (default auto)")
    a("--pruner-startup", type=int, default=3, help="median/patient: complete trials before pruning starts (default 3)")
    a("--pruner-warmup", type=int, default=0, help="median/patient: steps of a trial before it can be pruned (default 0)")
    a("--patience", type=int, default=2, help="patient: evaluations without improvement tolerated (default 2)")
    a("--weights", default="0.7,0.3", help="ACCURACY,STABILITY weights of the objective (default 0.7,0.3)")
    a("--multi-objective", action="store_true",
      help="optimise (accuracy, stability) as two objectives and report the Pareto front (no pruning)")
    a("--enqueue", action="append", default=[], metavar="KEY=V[,KEY=V...]",
      help="run these parameter values first (repeatable), e.g. the recipe's own: optim.lr=1e-5")
    a("--keep-checkpoints", choices=("best", "all"), default="best",
      help="best: delete checkpoints of trials that are not the best (a 135M checkpoint is ~0.5 GB) (default best)")
    a("--report-only", action="store_true", help="run no trial: rewrite the outputs from the stored study")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gmpo tune` (options may come before, between or after CONFIG and the overrides)."""
    _add_options(parser)
    parser.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG.yaml | key=value",
                        help="a YAML recipe followed by key.path=value overrides applied to every trial")
    parser.set_defaults(_tune_parser=parser)


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after CONFIG (swallowed by REMAINDER) parsed together with the positional items."""
    if any(a in ("-h", "--help") for a in args.items):
        args._tune_parser.print_help()
        raise SystemExit(0)
    p = argparse.ArgumentParser(prog="gmpo tune", add_help=False)
    _add_options(p)
    p.add_argument("items", nargs="*")
    p.set_defaults(**{k: v for k, v in vars(args).items() if k != "items"})
    return p.parse_intermixed_args(args.items)


def parse_enqueue(items: list[str]) -> list[dict]:
    """['optim.lr=1e-5,train.mini_batch_size=32'] -> [{'optim.lr': 1e-05, 'train.mini_batch_size': 32}]."""
    from gmpo.config import parse_override

    out = []
    for item in items:
        values = {}
        for part in (x for x in item.split(",") if x.strip()):
            path, value = parse_override(part)
            values[".".join(path)] = value
        out.append(values)
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of `gmpo tune`."""
    from gmpo.commands.train import split_items

    args = _reparse(args)
    try:
        path, overrides = split_items(args.items)
        if path is None or args.space is None or args.trials is None:
            raise ConfigError("usage: gmpo tune CONFIG.yaml --space SPACE.yaml --trials N [key.path=value ...]")
        from gmpo.tune.objective import parse_weights
        from gmpo.tune.study import TuneSettings, run_study

        s = TuneSettings(config=path, space=args.space, trials=args.trials, overrides=overrides,
                         workers=args.workers, study=args.study, storage=args.storage, out=args.out,
                         executor=args.executor, threads=args.threads, sampler=args.sampler, seed=args.seed,
                         startup_trials=args.startup_trials, pruner=args.pruner, pruner_startup=args.pruner_startup,
                         pruner_warmup=args.pruner_warmup, patience=args.patience,
                         weights=parse_weights(args.weights), multi_objective=args.multi_objective,
                         enqueue=parse_enqueue(args.enqueue), keep_checkpoints=args.keep_checkpoints,
                         report_only=args.report_only)
        res = run_study(s)
    except ConfigError as e:
        print(f"gmpo tune: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        if getattr(e, "name", "") != "optuna":
            raise
        print("gmpo tune: error: Optuna is not installed: pip install 'gmpo[tune]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gmpo tune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    counts = ", ".join(f"{n} {k}" for k, n in sorted(res.counts.items()))
    print(f"study {res.study_name}: {counts}")
    print(f"report: {res.html}")
    if res.best_number is None:
        print("no trial completed: no best config", file=sys.stderr)
        return 1
    print(f"best trial {res.best_number}: value {res.best_value:.4f} {res.best_params}")
    print(f"best config: {res.best_config}  (run it: gmpo train {res.best_config})")
    print(f"best trial's run directory: {res.best_run_dir}")
    return 0
