"""Hyperparameter search over gmpo recipes with Optuna (``gmpo tune``): every trial a real training run.

- :mod:`gmpo.tune.space`      the search-space YAML and its validation against the config schema
- :mod:`gmpo.tune.objective`  held-out accuracy, the scale-free stability score, failed-trial verdicts
- :mod:`gmpo.tune.trials`     one trial as a subprocess (``gmpo train``) or in-process (the step API)
- :mod:`gmpo.tune.study`      storage, sampler, pruner, parallel workers, resume
- :mod:`gmpo.tune.report`     best config YAML, summary, trial table, figures (:mod:`gmpo.tune.plots`), HTML

``run_study(TuneSettings(config="configs/arithmetic_gmpo.yaml", space="space.yaml", trials=12))`` is the
Python entry point. Optuna (the ``tune`` extra) is imported only when a study is opened.
"""
from gmpo.tune.objective import stability
from gmpo.tune.space import SpaceError, load_space, validate_space
from gmpo.tune.study import TuneSettings, run_study

__all__ = ["SpaceError", "TuneSettings", "load_space", "run_study", "stability", "validate_space"]
