"""Benchmark loaders on the real files in ../shared/data: counts, fields, gold types, hub wiring."""
import pytest

from gmpo.eval.benchmarks import BENCHMARKS, GROUPS, gold_of, load_benchmark, resolve_names

COUNTS = {"math500": 500, "aime24": 30, "amc": 40, "minerva": 272, "olympiadbench": 675, "gsm8k": 1319,
          "drgrpo_aime": 30, "drgrpo_amc": 83, "drgrpo_math": 500, "drgrpo_minerva": 272,
          "drgrpo_olympiad_bench": 675}

FIRST_GOLD = {
    "math500": r"\left( 3, \frac{\pi}{2} \right)",
    "aime24": "204",
    "amc": 27.0,
    "minerva": "1.6",  # last \boxed{} of the solution
    "olympiadbench": ["2"],
    "gsm8k": "18",  # text after "#### "
    "drgrpo_aime": "204",
    "drgrpo_amc": 142.0,
    "drgrpo_math": r"\left( 3, \frac{\pi}{2} \right)",
    "drgrpo_minerva": ["9.6"],  # stored as "9.6\n"
    "drgrpo_olympiad_bench": ["2"],
}
GOLD_TYPE = {"math500": str, "aime24": str, "amc": float, "minerva": str, "olympiadbench": list, "gsm8k": str,
             "drgrpo_aime": str, "drgrpo_amc": float, "drgrpo_math": str, "drgrpo_minerva": list,
             "drgrpo_olympiad_bench": list}


def test_registry_covers_the_suite():
    assert set(COUNTS) == set(BENCHMARKS)
    assert resolve_names("default") == ["math500", "aime24", "amc", "minerva", "olympiadbench", "gsm8k"]
    assert resolve_names("paper") == GROUPS["paper"] and len(GROUPS["paper"]) == 5
    assert resolve_names("gsm8k, math500,gsm8k") == ["gsm8k", "math500"]
    with pytest.raises(ValueError, match="unknown benchmark 'math5000'.*math500"):
        resolve_names("math5000")


@pytest.mark.parametrize("name", list(COUNTS))
def test_loader_count_fields_and_gold(shared_data, name):
    probs = load_benchmark(name, shared_data)
    assert len(probs) == COUNTS[name]
    head = load_benchmark(name, shared_data, limit=5)
    assert [p.index for p in head] == [0, 1, 2, 3, 4]
    assert head[0].gold == FIRST_GOLD[name]
    for p in head:
        assert isinstance(p.question, str) and len(p.question) > 20
        assert isinstance(p.gold, GOLD_TYPE[name])
        if isinstance(p.gold, list):
            assert p.gold and all(isinstance(g, str) and g for g in p.gold)
    has_solution = BENCHMARKS[name].local.solution != ""
    assert all((p.solution is not None) == has_solution for p in head)


def test_gold_kinds():
    assert gold_of({"a": " 5 "}, "text:a") == "5"
    assert gold_of({"a": 27}, "text:a") == 27.0
    assert gold_of({"a": "27.0"}, "number:a") == 27.0
    assert gold_of({"a": ["1\n", " "]}, "list:a") == ["1"]
    assert gold_of({"s": r"so \boxed{1} no \boxed{\frac{1}{2}} cm"}, "boxed:s") == r"\frac{1}{2}"
    assert gold_of({"s": "9 * 2 = 18\n#### 1,080"}, "gsm8k:s") == "1080"
    with pytest.raises(ValueError, match="boxed"):
        gold_of({"s": "no box"}, "boxed:s")
    with pytest.raises(KeyError, match="gold field 'b' missing"):
        gold_of({"a": 1}, "text:b")


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="math500.jsonl"):
        load_benchmark("math500", tmp_path)
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("math500", tmp_path, limit=-1)


def test_hub_source_is_the_default(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "openai/gsm8k":
            return datasets.Dataset.from_list([{"question": "What is 2+3, in apples?", "answer": "2+3=5\n#### 5"}])
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    probs = load_benchmark("gsm8k", "")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert probs[0].gold == "5" and probs[0].question.startswith("What is 2+3")
    with pytest.raises(RuntimeError, match="HuggingFaceH4/MATH-500.*--data-dir"):
        load_benchmark("math500", "")
    assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test")
    with pytest.raises(ValueError, match="no hub dataset.*understand-r1-zero"):
        load_benchmark("drgrpo_amc", "")
