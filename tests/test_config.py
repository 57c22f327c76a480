"""Config: YAML + dotted overrides, type coercion, clear errors for typos and bad values."""
import pytest

from gmpo.config import ConfigError, Config, describe, load_config, save_config


def test_defaults_and_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["train.bf16=false", "algorithm.loss=grpo", "optim.lr=2e-5", "rollout.stop=[a, b]"])
    assert cfg.train.bf16 == "false" and cfg.algorithm.loss == "grpo"
    assert cfg.optim.lr == pytest.approx(2e-5) and cfg.rollout.stop == ["a", "b"]
    assert load_config(None, ["train.bf16=true"]).train.bf16 == "true"


def test_yaml_file_roundtrip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 7\nrewards:\n  - {name: format, weight: 0.5}\n")
    cfg = load_config(p, ["train.seed=3"])
    assert cfg.train.steps == 7 and cfg.train.seed == 3
    assert cfg.rewards[0].name == "format" and cfg.rewards[0].weight == 0.5
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert again == cfg


@pytest.mark.parametrize("override, match", [
    (["train.bf61=1"], r"unknown config key 'train.bf61' \(did you mean 'train.bf16'\?\)"),
    (["algorithm.loss=ppo"], r"algorithm.loss='ppo' is not one of"),
    (["train.steps=0"], r"train.steps must be > 0"),
    (["train.steps=1.5"], r"train.steps: expected an integer"),
    (["train.mini_batch_size=48"], r"must divide the rollout batch"),
    (["rollout.temperature=0"], r"rollout.temperature must be > 0"),
    (["nokey"], r"must look like key.path=value"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_describe_documents_every_option():
    rows = describe(Config)
    keys = {k for k, _, _ in rows}
    assert {"train.steps", "algorithm.eps_low", "model.lora.r", "rollout.group_size", "rewards"} <= keys
    undocumented = [k for k, _, h in rows if not h]
    assert not undocumented, f"options without help text: {undocumented}"
