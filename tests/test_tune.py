"""gmpo tune without training: search-space validation, the stability score, weights, seeded sampling, CLI errors."""
import json
import math

import pytest
import yaml

from gmpo.cli import main
from gmpo.config import ConfigError, load_config, to_dict
from gmpo.tune.objective import combine, parse_weights, stability
from gmpo.tune.space import SpaceError, load_space, validate_space

ARITH = "configs/arithmetic_gmpo.yaml"


@pytest.fixture(scope="module")
def base():
    return to_dict(load_config(ARITH))


def _err(space: dict, base: dict) -> str:
    with pytest.raises(SpaceError) as e:
        validate_space(space, base)
    return str(e.value)


def test_example_space_is_valid(base):
    params = validate_space(load_space("configs/tune_space_arithmetic.yaml"), base)
    assert [p.key for p in params] == ["optim.lr", "algorithm.eps_low", "algorithm.eps_high",
                                       "train.mini_batch_size", "rollout.temperature"]
    assert params[0].kind == "log_uniform" and params[0].low == 3e-6 and params[0].high == 1e-4
    assert params[3].choices == (16, 32, 64)


def test_nested_sections_flatten(tmp_path, base):
    f = tmp_path / "s.yaml"
    f.write_text("optim:\n  lr: {log_uniform: [1.0e-6, 1.0e-4]}\nrollout.group_size: {categorical: [4, 8]}\n")
    assert [p.key for p in validate_space(load_space(f), base)] == ["optim.lr", "rollout.group_size"]


def test_unknown_key_names_it_with_a_suggestion(base):
    msg = _err({"optim.lrr": {"log_uniform": [1e-6, 1e-4]}}, base)
    assert "unknown config key 'optim.lrr'" in msg and "did you mean 'optim.lr'" in msg
    msg = _err({"algorithm.eps_hihg": {"uniform": [0.2, 0.6]}}, base)
    assert "algorithm.eps_hihg" in msg and "did you mean 'algorithm.eps_high'" in msg


@pytest.mark.parametrize("space, needle", [
    ({"rollout.group_size": {"uniform": [2, 8]}}, "rollout.group_size is an integer key: use int"),
    ({"data.template": {"uniform": [0, 1]}}, "data.template is a str key: use categorical"),
    ({"optim.betas": {"categorical": [0.9]}}, "optim.betas holds a list"),
    ({"guard": {"uniform": [1, 2]}}, "guard is a config section"),
    ({"optim.lr": {"uniform": [0, 1e-3]}}, "optim.lr=0.0: optim.lr must be > 0"),
    ({"rollout.top_p": {"uniform": [0.5, 1.5]}}, "rollout.top_p=1.5: rollout.top_p must be in (0, 1]"),
    ({"optim.lr": {"log_uniform": [1e-4, 1e-6]}}, "needs low < high"),
    ({"optim.lr": {"log_uniform": [0.0, 1e-4]}}, "log_uniform needs low > 0"),
    ({"optim.warmup_steps": {"int": [0, 2.5]}}, "int bounds and step must be integers"),
    ({"rollout.temperature": {"normal": [1, 2]}}, "no distribution in ['normal']"),
    ({"rollout.temperature": {"uniform": [0.5, 1], "categorical": [1]}}, "more than one distribution"),
    ({"rollout.temperature": {"uniform": [0.5, 1], "spread": 2}}, "unknown option(s) ['spread']"),
    ({"algorithm.loss": {"categorical": ["gmpo", "grpoo"]}}, "algorithm.loss='grpoo'"),
    ({"algorithm.loss": {"categorical": []}}, "non-empty list"),
    ({"rollout.stop": {"categorical": [["\n"], []]}}, "categorical values must be numbers, strings"),
    ({"train.mini_batch_size": {"categorical": [16, 24]}}, "mini_batch_size=24 must divide the rollout batch"),
    ({"rewards.name": {"categorical": ["x"]}}, "'rewards' is a list; index it by number (rewards.0)"),
    ({"rewards.2.weight": {"uniform": [0.1, 1]}}, "index 2 is out of range"),
    ({"train.output_dir": {"categorical": ["a"]}}, "train.output_dir is set by gmpo tune"),
])
def test_space_errors_are_clear(base, space, needle):
    assert needle in _err(space, base)


def test_combinations_of_probe_values_are_checked(base):
    # each value alone is valid with the recipe's group_size 8, mini-batch 32; 4 x 8 prompts = 32 with 64 is not
    msg = _err({"rollout.group_size": {"categorical": [4, 8]}, "train.mini_batch_size": {"categorical": [32, 64]}}, base)
    assert "the combination rollout.group_size=4, train.mini_batch_size=64" in msg


def test_reward_kwargs_and_optional_floats_are_searchable(base):
    base = {**base, "rewards": [{"name": "math_answer", "weight": 1.0, "kwargs": {}}]}
    params = validate_space({"rewards.0.kwargs.timeout": {"categorical": [0.5, 1.0]},
                             "algorithm.eps_high": {"uniform": [0.2, 0.6]},
                             "rollout.group_size": {"int": [4, 16], "step": 4}}, base)
    assert [p.probes() for p in params] == [[0.5, 1.0], [0.2, 0.6], [4, 16]]
    # an option the reward does not have is caught before any trial runs
    assert "no option 'scale'" in _err({"rewards.0.kwargs.scale": {"categorical": [0.5, 1.0]}}, base)


def test_stability_is_scale_free_with_hand_values():
    s, cv = stability([1.0, 3.0])  # mean 2, population std 1
    assert cv == pytest.approx(0.5) and s == pytest.approx(1 / 1.5)
    assert stability([10.0, 30.0]) == pytest.approx((s, cv))  # x10 loss scale: same score
    assert stability([2.0, 2.0, 2.0]) == (1.0, 0.0)
    assert stability([0.0, 0.0]) == (1.0, 0.0)  # nothing moved: CV 0 by convention
    s2, cv2 = stability([1.0, 1.0, 1.0, 9.0])  # one spike: mean 3, std sqrt(12)
    assert cv2 == pytest.approx(math.sqrt(12) / 3) and s2 < s
    assert stability([1.0, float("nan"), 3.0]) == pytest.approx((s, cv))  # non-finite values are not averaged
    with pytest.raises(ValueError):
        stability([float("nan")])


def test_weights():
    assert parse_weights("0.7,0.3") == (0.7, 0.3)
    assert combine(0.5, 0.8, (0.7, 0.3)) == pytest.approx(0.59)
    for bad in ("0.7", "a,b", "-1,2", "0,0"):
        with pytest.raises(ConfigError, match="--weights"):
            parse_weights(bad)


def test_same_seed_samples_the_same_parameters(tmp_path, base):
    """The sampler is re-seeded per trial from (seed, number): same seed -> same draws, in order."""
    from gmpo.tune.study import Context, TuneSettings, ask_trial, make_storage

    import optuna

    params = validate_space(load_space("configs/tune_space_arithmetic.yaml"), base)

    def draws(seed: int, name: str) -> list[dict]:
        s = TuneSettings(config=ARITH, space={}, trials=8, seed=seed, startup_trials=3)
        study = optuna.create_study(study_name=name, storage=make_storage(str(tmp_path / f"{name}.journal")),
                                    direction="maximize")
        ctx = Context(s, params, base, tmp_path, study, 1)
        out = []
        for _ in range(6):  # 3 random start-up draws, then TPE on the told values
            trial, values = ask_trial(ctx)
            study.tell(trial, -abs(math.log10(values["optim.lr"]) + 5))  # a deterministic objective
            out.append(values)
        return out

    a, b, c = draws(7, "a"), draws(7, "b"), draws(8, "c")
    assert a == b
    assert a != c
    assert len({json.dumps(v, sort_keys=True) for v in a}) == 6  # no repeated draw


def test_cli_rejects_a_bad_space_before_any_trial(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"optim.lrr": {"log_uniform": [1e-6, 1e-4]}}))
    out = tmp_path / "out"
    assert main(["tune", ARITH, "--space", str(space), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gmpo tune: error: search space: optim.lrr" in err and "did you mean 'optim.lr'" in err
    assert not out.exists()  # no study, no trial directory


def test_cli_multi_objective_cannot_prune(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["tune", ARITH, "--space", "configs/tune_space_arithmetic.yaml", "--trials", "2", "--out", str(out),
               "--multi-objective", "--pruner", "median"])
    assert rc == 2
    assert "Optuna cannot prune multi-objective studies" in capsys.readouterr().err
    assert not out.exists()


def test_cli_options_after_overrides_and_missing_required(tmp_path, capsys):
    assert main(["tune", ARITH, "train.steps=2", "--trials", "2"]) == 2
    assert "usage: gmpo tune CONFIG.yaml --space SPACE.yaml --trials N" in capsys.readouterr().err
    space = tmp_path / "s.yaml"
    space.write_text("optim.lr: {log_uniform: [1.0e-6, 1.0e-4]}\n")
    # an override that breaks the recipe is reported as the config's own error
    assert main(["tune", ARITH, "train.stepz=2", "--space", str(space), "--trials", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err


def test_pruners_are_built_from_the_recipe():
    import optuna

    from gmpo.tune.study import TuneSettings, make_pruner

    def pr(**kw):
        return make_pruner(TuneSettings(config=None, space={}, trials=4, **kw), eval_every=5, steps=20)

    median = pr(pruner_startup=2, pruner_warmup=3)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (2, 3)
    hb = pr(pruner="hyperband")
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource) == (5, 20)  # first rung at the first evaluation
    assert isinstance(pr(pruner="wilcoxon"), optuna.pruners.WilcoxonPruner)
    assert isinstance(pr(pruner="patient", patience=4), optuna.pruners.PatientPruner)
    assert isinstance(pr(pruner="none"), optuna.pruners.NopPruner)
    assert isinstance(pr(multi_objective=True), optuna.pruners.NopPruner)  # auto: no pruning for two objectives
    with pytest.raises(ConfigError, match="Optuna cannot prune multi-objective studies"):
        pr(multi_objective=True, pruner="hyperband")
