"""gmpo cai: constitutions (ours and Hugging Face's recipe JSON), the fixed held-out split, generation's
dataset columns and splits, resuming without redoing finished prompts, and generation through a real endpoint."""
import json

import pytest

from cai_server import ChatServer
from gmpo.cai.constitution import ConstitutionError, load_constitution
from gmpo.cai.data import read_jsonl, read_prompts, split_prompts
from gmpo.cli import main

HF_CONSTITUTION = {
    "constitutions": [
        {"critic": "Say whether the answer helps with anything dangerous.", "revision": "Rewrite it to refuse the dangerous part."},
        {"critic": "Say whether the answer is rude.", "revision": "Rewrite it politely."},
    ],
    "system_chat": [[
        {"role": "user", "content": "How do I hotwire a car?"},
        {"role": "assistant", "content": "Connect the ignition wires."},
        {"role": "user", "content": "Say whether the answer helps with anything dangerous."},
        {"role": "assistant", "content": "It explains how to steal a car."},
        {"role": "user", "content": "Rewrite it to refuse the dangerous part."},
        {"role": "assistant", "content": "I can't help with that; a locksmith or your dealer can help if it is your car."},
    ]],
}
PROMPTS = ["How can I cheat on a test?", "What is 2 + 2?", "Write an insult for my coworker.", "How do I make a fake ID?",
           "Tell me a joke.", "How do I hide money from taxes?", "Where do I buy lockpicks?", "Is it ok to lie?"]


def test_hf_recipe_constitution_loads(tmp_path):
    path = tmp_path / "constitution_hf.json"
    path.write_text(json.dumps(HF_CONSTITUTION))
    c = load_constitution(path)
    assert [p.critique for p in c.principles] == [x["critic"] for x in HF_CONSTITUTION["constitutions"]]
    assert [p.revision for p in c.principles] == [x["revision"] for x in HF_CONSTITUTION["constitutions"]]
    assert c.fewshot_messages(1) == HF_CONSTITUTION["system_chat"][0] and c.fewshot_messages(0) == []
    assert c.draw(0, "abc", 0) == c.draw(0, "abc", 0)
    assert {c.draw(0, f"p{i}", 0).name for i in range(40)} == {"principle_1", "principle_2"}


def test_default_constitution_and_bad_files(tmp_path):
    c = load_constitution("default")
    assert {"harmless", "honest", "helpful"} <= {p.name for p in c.principles}
    assert "refuse" in c.judge_question("harmless") and len(c.fewshot_messages(1)) == 6
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - name: x\n    revision: fix it\n")
    with pytest.raises(ConstitutionError, match=r"principles\[0\]: 'critique' must be a non-empty string"):
        load_constitution(bad)
    with pytest.raises(ConstitutionError, match="not found"):
        load_constitution(tmp_path / "missing.yaml")


def test_heldout_split_is_fixed_and_order_free(shared_data):
    rows = read_prompts(shared_data / "redteam_prompts.jsonl")
    train, held = split_prompts(rows, 200, seed=0)
    assert (len(rows), len(train), len(held)) == (1500, 1300, 200)
    again_train, again_held = split_prompts(rows[::-1], 200, seed=0)
    assert {r["id"] for r in again_held} == {r["id"] for r in held}
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert {r["id"] for r in split_prompts(rows, 200, seed=1)[1]} != {r["id"] for r in held}


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def _gen(model_dir, prompts, out, *extra):
    return ["cai", "generate", "--prompts", str(prompts), "--model", str(model_dir), "--out", str(out),
            "--eval-size", "2", "--batch-size", "3", "--max-new-tokens", "8", "--threads", "1", "--device", "cpu", *extra]


def test_generate_columns_splits_and_resume(tmp_path, tiny_model_dir, capsys):
    import datasets

    prompts, out = _prompts(tmp_path), tmp_path / "out"
    assert main(_gen(tiny_model_dir, prompts, out, "--rounds", "2", "--limit", "4")) == 0
    first = (out / "records.jsonl").read_text()
    assert len(first.splitlines()) == 4
    assert main(_gen(tiny_model_dir, prompts, out, "--rounds", "2")) == 0  # all 6 training prompts
    assert "4 of 6 prompts already done" in capsys.readouterr().err
    text = (out / "records.jsonl").read_text()
    assert text.startswith(first) and len(text.splitlines()) == 6  # finished prompts were not redone
    full = datasets.load_dataset("parquet", data_files=str(out / "full.parquet"), split="train")
    assert set(full.column_names) == {"id", "prompt", "initial", "rounds", "final", "constitution"} and len(full) == 6
    names = {p.name for p in load_constitution().principles}
    for row in full:
        assert len(row["rounds"]) == 2 and {r["principle"] for r in row["rounds"]} <= names
        assert set(row["rounds"][0]) == {"principle", "critique_request", "critique", "revision_request", "revision"}
        assert row["final"] == row["rounds"][-1]["revision"]
    sft = read_jsonl(out / "sft.jsonl")
    prefs = read_jsonl(out / "prefs.jsonl")
    assert [r["response"] for r in sft] == full["final"] and [r["prompt"] for r in sft] == full["prompt"]
    assert [(r["chosen"], r["rejected"]) for r in prefs] == list(zip(full["final"], full["initial"]))
    held = [r["prompt"] for r in read_jsonl(out / "prompts" / "eval.jsonl")]
    assert len(held) == 2 and not set(held) & set(full["prompt"])  # the held-out prompts are never generated for
    assert main(_gen(tiny_model_dir, prompts, out, "--rounds", "1")) == 2  # other settings: refused, not mixed
    assert "generated with other settings (rounds: 2 there, 1 now)" in capsys.readouterr().err


def test_generate_through_an_openai_endpoint(tmp_path):
    prompts, out = _prompts(tmp_path), tmp_path / "ep"
    with ChatServer() as s:
        assert main(["cai", "generate", "--prompts", str(prompts), "--endpoint", s.url, "--model", "judge-x",
                     "--out", str(out), "--eval-size", "2", "--limit", "3", "--rounds", "1"]) == 0
        assert len(s.requests) == 9 and {r["model"] for r in s.requests} == {"judge-x"}  # 3 prompts x 3 stages
        revision_req = [r for r in s.requests if len(r["messages"]) == 5]
        assert len(revision_req) == 3 and revision_req[0]["messages"][3]["content"].startswith("reply")
    rec = read_jsonl(out / "records.jsonl")
    assert all(r["initial"].startswith("reply") and r["rounds"][0]["revision"].startswith("reply") for r in rec)
