"""Data loading (every file type, field mapping, malformed rows), the arithmetic task, PromptLoader resume."""
import json

import datasets
import pytest

from gmpo.config import ArithmeticConfig, DataConfig
from gmpo.data.arithmetic import arithmetic_splits
from gmpo.data.loader import PromptLoader
from gmpo.data.sources import DataError, build_datasets, load_prompts


# ----------------------------------------------------------------------------------------------
# loaders on the shared files (small slices)

def test_gsm8k_jsonl_slice_maps_question_to_prompt(shared_data):
    ds = load_prompts(str(shared_data / "gsm8k_test.jsonl"), "test[:20]", prompt_field="question")
    assert len(ds) == 20 and ds.column_names == ["prompt", "answer"]
    assert ds[0]["prompt"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert ds[0]["answer"].endswith("#### 18")


def test_math500_jsonl_keeps_other_columns(shared_data):
    ds = load_prompts(str(shared_data / "math500.jsonl"), "[10:15]", prompt_field="problem")
    assert len(ds) == 5
    assert {"prompt", "answer", "solution", "subject", "level", "unique_id"} == set(ds.column_names)
    full = [json.loads(line) for line in (shared_data / "math500.jsonl").read_text().splitlines()[10:15]]
    assert ds["prompt"] == [r["problem"] for r in full] and ds["answer"] == [r["answer"] for r in full]
    assert ds["level"] == [r["level"] for r in full]


def test_parquet_renames_conflicting_columns_and_reads_dotted_fields(shared_data):
    path = str(shared_data / "math_lvl3to5_8k_train.parquet")
    ds = load_prompts(path, "train[:8]", prompt_field="question", answer_field="gt_answer")
    assert len(ds) == 8 and ds[0]["prompt"].startswith("Let $a$ and $b$ be the two real values")
    assert ds[0]["answer"] == "118"
    # the source's own chat-formatted 'prompt' and 'answer' columns are kept under new names
    assert isinstance(ds[0]["source_prompt"], list) and ds[0]["source_prompt"][0]["role"] == "user"
    assert ds[0]["source_answer"] == "118" and ds[0]["level"] == 5
    dotted = load_prompts(path, "train[:8]", prompt_field="extra_info.question", answer_field="reward_model.ground_truth")
    assert dotted["answer"] == ds["answer"] and dotted["prompt"] == ds["prompt"]


def test_arrow_shard_with_float_and_list_answers(shared_data):
    amc = load_prompts(str(shared_data / "drgrpo_eval_amc.arrow"), "test[:10]", prompt_field="problem")
    assert len(amc) == 10 and amc[0]["answer"] == 142.0 and amc.column_names == ["prompt", "answer", "difficulty"]
    minerva = load_prompts(str(shared_data / "drgrpo_eval_minerva.arrow"), "test[:3]", prompt_field="problem")
    assert minerva[0]["answer"] == ["9.6\n"]


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    d = datasets.Dataset.from_dict({"q": ["a?", "b?", "c?"], "answer": ["1", "2", "3"]})
    d.save_to_disk(str(tmp_path / "single"))
    ds = load_prompts(str(tmp_path / "single"), "train[1:]", prompt_field="q")
    assert ds["prompt"] == ["b?", "c?"] and ds["answer"] == ["2", "3"]
    datasets.DatasetDict({"train": d, "test": d.select([2])}).save_to_disk(str(tmp_path / "dd"))
    assert load_prompts(str(tmp_path / "dd"), "test", prompt_field="q")["prompt"] == ["c?"]
    with pytest.raises(DataError, match="no split 'validation' \\(splits: train, test\\)"):
        load_prompts(str(tmp_path / "dd"), "validation", prompt_field="q")


def test_csv_keeps_question_and_gold_as_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('question,answer,level\n"What is 3+4, exactly?",007,2\nTen squared?,"1,000",3\n')
    ds = load_prompts(str(p), prompt_field="question")
    assert ds["prompt"] == ["What is 3+4, exactly?", "Ten squared?"]
    assert ds["answer"] == ["007", "1,000"] and ds["level"] == [2, 3]


def test_json_array_object_and_lines(tmp_path):
    rows = [{"prompt": "p1", "answer": "1"}, {"prompt": "p2", "answer": "2", "extra": "x"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "data": rows}))
    (tmp_path / "c.json").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("a.json", "b.json", "c.json"):
        ds = load_prompts(str(tmp_path / name))
        assert ds["prompt"] == ["p1", "p2"] and ds["extra"] == [None, "x"], name


# ----------------------------------------------------------------------------------------------
# malformed rows: the message names file, row and field

def _jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_missing_field_names_file_line_and_field(tmp_path):
    p = _jsonl(tmp_path / "bad.jsonl", ['{"q": "a", "answer": "1"}', "", '{"answer": "2"}'])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: field 'q' is missing \(fields present: answer\)"):
        load_prompts(p, prompt_field="q")


def test_missing_column_lists_available(tmp_path):
    p = tmp_path / "nocol.csv"
    p.write_text("question,answer\nwhat?,1\n")
    with pytest.raises(DataError, match=r"nocol\.csv: row 1: field 'problem' is missing \(columns: question, answer\)"):
        load_prompts(str(p), prompt_field="problem")


def test_non_string_and_empty_prompt(tmp_path):
    p = _jsonl(tmp_path / "num.jsonl", ['{"prompt": "ok", "answer": "1"}', '{"prompt": ["x"], "answer": "2"}'])
    with pytest.raises(DataError, match=r"num\.jsonl: line 2: field 'prompt' must be a string, got list"):
        load_prompts(p)
    p = _jsonl(tmp_path / "empty.jsonl", ['{"prompt": "ok", "answer": "1"}', '{"prompt": "  ", "answer": "2"}'])
    with pytest.raises(DataError, match=r"empty\.jsonl: line 2: field 'prompt' is empty"):
        load_prompts(p)


def test_unparsable_json_line(tmp_path):
    p = _jsonl(tmp_path / "broken.jsonl", ['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": '])
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2: not valid JSON"):
        load_prompts(p)


def test_null_gold_in_parquet_names_row(tmp_path):
    p = tmp_path / "g.parquet"
    datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "gold": ["1", "2", None]}).to_parquet(str(p))
    with pytest.raises(DataError, match=r"g\.parquet: row 3: field 'gold' is missing \(null\)"):
        load_prompts(str(p), answer_field="gold")


def test_mixed_types_in_a_column_named(tmp_path):
    p = _jsonl(tmp_path / "mixed.jsonl", ['{"prompt": "a", "answer": "1"}', '{"prompt": "a", "answer": "1", "id": 1}', '{"prompt": "b", "answer": "2", "id": "x"}'])
    with pytest.raises(DataError, match=r"mixed\.jsonl: column 'id' mixes int, str \(first different value at line 3\)"):
        load_prompts(p)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_prompts(str(tmp_path / "x.txt"))


# ----------------------------------------------------------------------------------------------
# arithmetic task

def test_arithmetic_deterministic_disjoint_and_correct():
    cfg = ArithmeticConfig(n_train=300, n_eval=50, min_value=0, max_value=99, seed=7)
    train, held = arithmetic_splits(cfg)
    train2, held2 = arithmetic_splits(ArithmeticConfig(n_train=300, n_eval=50, min_value=0, max_value=99, seed=7))
    assert train["prompt"] == train2["prompt"] and held["prompt"] == held2["prompt"]
    other, _ = arithmetic_splits(ArithmeticConfig(n_train=300, n_eval=50, min_value=0, max_value=99, seed=8))
    assert other["prompt"] != train["prompt"]
    assert len(train) == 300 and len(held) == 50
    assert not set(train["expression"]) & set(held["expression"])
    assert len(set(train["expression"])) == 300  # distinct while the space allows
    for row in list(train) + list(held):
        assert row["prompt"] == f"What is {row['expression']}? Answer with just the number."
        assert row["answer"] == str(eval(row["expression"]))  # noqa: S307 (our own digits and + -)


def test_arithmetic_small_space_repeats_without_touching_held_out():
    # 0..3 with + and -: 4 * 4 * 2 = 32 expressions; 5 held out leaves 27 for 100 training rows
    train, held = arithmetic_splits(ArithmeticConfig(n_train=100, n_eval=5, min_value=0, max_value=3, seed=1))
    assert len(train) == 100 and len(set(held["expression"])) == 5
    assert set(train["expression"]) | set(held["expression"]) == {
        f"{a} {o} {b}" for a in range(4) for b in range(4) for o in "+-"
    }
    assert not set(train["expression"]) & set(held["expression"])
    with pytest.raises(DataError, match="only 32 distinct expressions"):
        arithmetic_splits(ArithmeticConfig(n_eval=32, max_value=3))


def test_arithmetic_precedence_negatives_and_bad_ops():
    train, _ = arithmetic_splits(ArithmeticConfig(n_train=200, n_eval=10, ops=["+", "-", "*"], num_terms=3, seed=3))
    for e, a in zip(train["expression"], train["answer"]):
        assert a == str(eval(e))  # noqa: S307
    assert any(a.startswith("-") for a in train["answer"])
    with pytest.raises(DataError, match=r"ops: \['/'\]: choose from \+, -, \*"):
        arithmetic_splits(ArithmeticConfig(ops=["+", "/"]))


# ----------------------------------------------------------------------------------------------
# build_datasets

def test_build_datasets_arithmetic_default_eval_size():
    train, ev = build_datasets(DataConfig(eval_size=30), seed=0)
    assert len(train) == 2000 and len(ev) == 30
    assert not set(train["expression"]) & set(ev["expression"])
    _, full = build_datasets(DataConfig(eval_size=0), seed=0)
    assert len(full) == 200 and full["prompt"][:30] == ev["prompt"]


def test_build_datasets_files(shared_data):
    cfg = DataConfig(
        dataset=str(shared_data / "gsm8k_train.jsonl"), split="train[:40]",
        eval_dataset=str(shared_data / "gsm8k_test.jsonl"), eval_split="test[:25]", eval_size=10,
        prompt_field="question",
    )
    train, ev = build_datasets(cfg, seed=0)
    assert len(train) == 40 and len(ev) == 10 and ev[0]["answer"].endswith("#### 18")
    single = DataConfig(dataset=str(shared_data / "gsm8k_test.jsonl"), prompt_field="question")
    with pytest.raises(DataError, match="single file with no 'test' split"):
        build_datasets(single, seed=0)
    single.split, single.eval_split, single.eval_size = "train[:30]", "train[-12:]", 0
    train, ev = build_datasets(single, seed=0)
    assert len(train) == 30 and len(ev) == 12 and not set(train["prompt"]) & set(ev["prompt"])


def test_build_datasets_file_train_with_arithmetic_eval(shared_data):
    cfg = DataConfig(dataset=str(shared_data / "math500.jsonl"), split="[:5]", prompt_field="problem",
                     eval_dataset="arithmetic", eval_size=7)
    train, ev = build_datasets(cfg, seed=0)
    assert len(train) == 5 and len(ev) == 7 and ev[0]["prompt"].startswith("What is ")


# ----------------------------------------------------------------------------------------------
# PromptLoader

def _cfg(**kw):
    c = DataConfig()
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _small(n=10):
    return datasets.Dataset.from_dict({"prompt": [f"q{i}" for i in range(n)], "answer": [str(i) for i in range(n)],
                                       "meta": list(range(n))})


def test_loader_items_and_epoch_coverage(tok):
    loader = PromptLoader(_small(10), tok, _cfg(), batch_size=5, seed=3)
    b = loader.next_batch()
    assert set(b[0]) == {"prompt", "answer", "meta", "prompt_text", "prompt_ids"}
    assert b[0]["prompt_text"] == f"<|im_start|>user\n{b[0]['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert b[0]["prompt_ids"] == tok(b[0]["prompt_text"], add_special_tokens=False)["input_ids"]
    assert b[0]["answer"] == str(b[0]["meta"])
    epoch0 = [x["meta"] for x in b + loader.next_batch()]
    epoch1 = [x["meta"] for x in loader.next_batch() + loader.next_batch()]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1 and epoch0 != list(range(10))  # reshuffled each epoch
    assert loader.epoch == 1


def test_loader_seeded_and_unshuffled(tok):
    a = [x["meta"] for x in PromptLoader(_small(), tok, _cfg(), 10, seed=1).next_batch()]
    b = [x["meta"] for x in PromptLoader(_small(), tok, _cfg(), 10, seed=1).next_batch()]
    c = [x["meta"] for x in PromptLoader(_small(), tok, _cfg(), 10, seed=2).next_batch()]
    assert a == b and a != c
    plain = PromptLoader(_small(), tok, _cfg(shuffle=False), 4, seed=1)
    assert [x["meta"] for x in plain.next_batch() + plain.next_batch() + plain.next_batch()] == [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1
    ]


def test_loader_resume_gives_same_next_batches(tok):
    cfg = _cfg()
    a = PromptLoader(_small(7), tok, cfg, batch_size=3, seed=5)
    for _ in range(2):  # mid-epoch: 6 of 7 prompts used
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints store it as JSON
    expected = [[x["meta"] for x in a.next_batch()] for _ in range(5)]  # crosses epochs 1..2
    b = PromptLoader(_small(7), tok, cfg, batch_size=3, seed=999)
    b.load_state_dict(state)
    assert [[x["meta"] for x in b.next_batch()] for _ in range(5)] == expected
    with pytest.raises(DataError, match="cannot resume the prompt stream.*7 prompts.*this data has 8"):
        PromptLoader(_small(8), tok, cfg, 3, seed=5).load_state_dict(state)


def test_loader_prompt_too_long_names_row(tok):
    ds = datasets.Dataset.from_dict({"prompt": ["short", "x" * 200, "y"], "answer": ["1", "2", "3"]})
    # character-level ChatML: <|im_start|> + "user\n" (5) + 200 + <|im_end|> + "\n" + <|im_start|> + "assistant\n" (10)
    with pytest.raises(DataError, match=r"dataset row 2: the rendered prompt has 219 tokens, more than data.max_prompt_tokens=100"):
        PromptLoader(ds, tok, _cfg(max_prompt_tokens=100), 2, seed=0)


def test_loader_adds_bos_for_raw_templates_only():
    from tokenizers.processors import TemplateProcessing

    from gmpo.testing import tiny_tokenizer

    t = tiny_tokenizer()  # make it Llama-like: the tokenizer prepends BOS by default
    t._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    ds = datasets.Dataset.from_dict({"prompt": ["ab"], "answer": ["1"]})
    plain = PromptLoader(ds, t, _cfg(template="plain"), 1, seed=0).next_batch()[0]
    assert plain["prompt_ids"] == [t.bos_token_id] + t("ab", add_special_tokens=False)["input_ids"]
    chat = PromptLoader(ds, t, _cfg(template="chat"), 1, seed=0).next_batch()[0]
    assert chat["prompt_ids"] == t(chat["prompt_text"], add_special_tokens=False)["input_ids"]
    assert chat["prompt_ids"].count(t.bos_token_id) == 2  # the chat template's own <|im_start|> tokens only


def test_hub_name_goes_to_datasets_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["#### 1", "#### 2"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_prompts("openai/gsm8k", "train[:2]", "main", prompt_field="question")
    assert calls == [("openai/gsm8k", "main", "train[:2]")] and ds["prompt"] == ["q1", "q2"]

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot load dataset 'openai/gsm8k' \\(subset main\\) split 'test'.*local file, give its path"):
        load_prompts("openai/gsm8k", "test", "main", prompt_field="question")
