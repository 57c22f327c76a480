"""The evaluation runner with a scripted engine (exact scores, records, resume) and the CLI on a tiny model."""
import json

import pytest
import torch

from gmpo.eval import evaluate, load_benchmark, run_eval
from gmpo.eval.metrics import pass_at_k
from gmpo.rollout.base import Rollout, SamplingParams


class ScriptedEngine:
    """A RolloutEngine whose completions come from ``answer(problem_index, sample_j)`` (tests only)."""

    def __init__(self, tok, questions: dict[str, int], answer, fail_on_call: int | None = None,
                 truncated: bool = False):
        self.tok, self.answer, self.fail_on_call, self.truncated = tok, answer, fail_on_call, truncated
        # as the prompt decodes (the tiny tokenizer maps non-ASCII characters to <unk>)
        self.questions = {tok.decode(tok(q, add_special_tokens=False)["input_ids"]): i for q, i in questions.items()}
        self.calls: list[tuple[int, SamplingParams]] = []

    def _index(self, prompt: str) -> int:
        hits = [i for q, i in self.questions.items() if q in prompt]
        assert len(hits) == 1, prompt
        return hits[0]

    def generate(self, prompts, params):
        self.calls.append((len(prompts), params))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        texts = [self.answer(self._index(self.tok.decode(ids)), j) for ids in prompts for j in range(params.n)]
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        T = max(len(x) for x in ids)
        comp = torch.full((len(ids), T), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), T)
        for r, x in enumerate(ids):
            comp[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        return Rollout(prompt_ids=list(prompts), completion_ids=comp, completion_mask=mask,
                       logprobs=torch.zeros(len(ids), T),
                       truncated=torch.full((len(ids),), self.truncated, dtype=torch.bool),
                       texts=texts, n=params.n)

    def sync_weights(self, model):
        pass


@pytest.fixture
def gsm8k(shared_data):
    return load_benchmark("gsm8k", shared_data, limit=8)


def even_right(probs):
    """Problem i answered right (boxed gold) when i is even, else a wrong boxed number."""
    return lambda i, j: (f"Let me compute. \\boxed{{{probs[i].gold}}}" if i % 2 == 0 else r"I think \boxed{-1}")


def make_engine(tok, probs, answer, **kw):
    return ScriptedEngine(tok, {p.question: p.index for p in probs}, answer, **kw)


def test_greedy_scores_and_records(tok, gsm8k, shared_data, tmp_path):
    eng = make_engine(tok, gsm8k, even_right(gsm8k))
    rec = tmp_path / "r.problems.jsonl"
    rep = run_eval(None, tok, "gsm8k", data_dir=shared_data, limit=6, batch_size=4, engine=eng,
                   max_new_tokens=64, records_path=rec)
    assert [n for n, _ in eng.calls] == [4, 2]
    params = eng.calls[0][1]
    assert params.temperature == 0.0 and params.n == 1 and params.max_new_tokens == 64
    assert rep["benchmarks"]["gsm8k"] == {"n": 6, "pass@1": 0.5}
    assert rep["average"] == {"pass@1": 0.5} and rep["primary_metric"] == "pass@1"
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2, 3, 4, 5]
    first = lines[0]
    assert first["gold"] == "18" and first["preds"] == ["18"] and first["correct"] == [True]
    assert "Janet" in first["prompt"] and first["prompt"].startswith("<|im_start|>user")
    assert lines[1]["preds"] == ["-1"] and lines[1]["correct"] == [False]
    assert rep["timing"]["generated_tokens"] == sum(r["n_tokens"][0] for r in lines)


def test_truncated_completions_need_an_explicit_answer(tok, gsm8k, shared_data):
    bare = lambda i, j: f"so far we have {gsm8k[i].gold}"  # noqa: E731  (the last number, no marker)
    kw = dict(data_dir=shared_data, limit=4, max_new_tokens=8)
    finished = run_eval(None, tok, "gsm8k", engine=make_engine(tok, gsm8k, bare), **kw)
    cut = run_eval(None, tok, "gsm8k", engine=make_engine(tok, gsm8k, bare, truncated=True), **kw)
    assert finished["benchmarks"]["gsm8k"]["pass@1"] == 1.0
    assert cut["benchmarks"]["gsm8k"]["pass@1"] == 0.0


def test_last_number_fallback_per_benchmark(tok, shared_data):
    math = load_benchmark("math500", shared_data, limit=10)
    bare = lambda i, j: f"We simplify and get {math[i].gold}"  # noqa: E731  (no box, no answer phrase)
    boxed = lambda i, j: f"We simplify: $\\boxed{{{math[i].gold}}}$"  # noqa: E731
    kw = dict(data_dir=shared_data, limit=10, max_new_tokens=8)
    acc = {fb: run_eval(None, tok, "math500", engine=make_engine(tok, math, bare), fallback=fb, **kw)
           ["benchmarks"]["math500"]["pass@1"] for fb in ("auto", "last-number", "none")}
    # read by its last number, "... get <gold>" is right for golds 9, 42, 27, 90^\\circ, 4 and wrong for the
    # tuple, "p - q", \\frac{14}{3}, \\text{Evelyn}, 3\\sqrt{13} (last numbers 2, none, 3, none, 13)
    assert acc == {"auto": 0.0, "last-number": 0.5, "none": 0.0}
    assert run_eval(None, tok, "math500", engine=make_engine(tok, math, boxed), **kw)["benchmarks"]["math500"][
        "pass@1"] == 1.0
    with pytest.raises(ValueError, match="fallback"):
        run_eval(None, tok, "math500", engine=make_engine(tok, math, boxed), fallback="maybe", **kw)


def test_resume_after_interruption(tok, gsm8k, shared_data, tmp_path):
    rec = tmp_path / "r.problems.jsonl"
    kw = dict(data_dir=shared_data, limit=8, batch_size=3, max_new_tokens=64, records_path=rec)
    eng = make_engine(tok, gsm8k, even_right(gsm8k), fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(None, tok, "gsm8k", engine=eng, **kw)
    assert len(rec.read_text().splitlines()) == 3  # the first batch was saved
    with open(rec, "a") as f:
        f.write('{"benchmark": "gsm8k", "ind')  # a line cut mid-write: that problem is redone
    eng2 = make_engine(tok, gsm8k, even_right(gsm8k))
    rep = run_eval(None, tok, "gsm8k", engine=eng2, **kw)
    assert [n for n, _ in eng2.calls] == [3, 2]  # only the 5 remaining problems
    assert rep["timing"]["resumed_problems"] == 3
    assert rep["benchmarks"]["gsm8k"] == {"n": 8, "pass@1": 0.5}
    # a third run generates nothing
    eng3 = make_engine(tok, gsm8k, even_right(gsm8k))
    assert run_eval(None, tok, "gsm8k", engine=eng3, **kw)["benchmarks"]["gsm8k"]["pass@1"] == 0.5
    assert eng3.calls == []
    with pytest.raises(ValueError, match="other settings"):
        run_eval(None, tok, "gsm8k", engine=eng3, **{**kw, "max_new_tokens": 32})


def test_sampling_reports_mean_and_unbiased_pass_at_k(tok, gsm8k, shared_data):
    # problem i: its first (i % 5) of 4 samples are right
    answer = lambda i, j: (f"The answer is {gsm8k[i].gold}." if j < i % 5 else "The answer is 0.")  # noqa: E731
    eng = make_engine(tok, gsm8k, answer)
    rep = run_eval(None, tok, ["gsm8k"], data_dir=shared_data, limit=8, samples=4, temperature=1.0,
                   batch_size=8, engine=eng)
    m = rep["benchmarks"]["gsm8k"]
    c = [min(i % 5, 4) for i in range(8)]  # 0 1 2 3 4 0 1 2
    assert eng.calls[0][1].n == 4 and eng.calls[0][1].temperature == 1.0
    assert m["mean@4"] == pytest.approx(sum(c) / 32)
    for k in (1, 2, 4):
        assert m[f"pass@{k}"] == pytest.approx(sum(pass_at_k(4, ci, k) for ci in c) / 8)
    assert m["pass@4"] == pytest.approx(6 / 8)
    assert rep["primary_metric"] == "mean@4"
    with pytest.raises(ValueError, match="temperature"):
        run_eval(None, tok, ["gsm8k"], data_dir=shared_data, limit=2, samples=4, temperature=0.0, engine=eng)


def test_evaluate_api_for_the_trainer(tok, shared_data):
    gsm = load_benchmark("gsm8k", shared_data, limit=4)
    amc = load_benchmark("amc", shared_data, limit=4)
    probs = gsm + amc
    questions = {p.question: k for k, p in enumerate(probs)}

    def answer(k, j):
        p = probs[k]
        gold = f"{p.gold:g}" if isinstance(p.gold, float) else p.gold  # AMC 27.0 answered as "27"
        return rf"\boxed{{{gold}}}" if k in (0, 4, 5, 6) else r"\boxed{}"

    eng = ScriptedEngine(tok, questions, answer)
    acc = evaluate(None, tok, ["gsm8k", "amc"], data_dir=shared_data, limit=4, max_new_tokens=16,
                   template="qwen_math", engine=eng)
    assert acc == {"gsm8k": 0.25, "amc": 0.75}


def test_cli_eval_tiny_model_and_resume(tiny_model_dir, shared_data, tmp_path, capsys):
    from gmpo.cli import main

    out = tmp_path / "res.json"
    argv = ["eval", "--model", str(tiny_model_dir), "--benchmarks", "gsm8k,amc", "--data-dir", str(shared_data),
            "--limit", "2", "--max-new-tokens", "4", "--out", str(out), "--no-progress", "--bf16", "false",
            "--batch-size", "2"]
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    assert rep["benchmarks"]["gsm8k"]["n"] == 2 and rep["benchmarks"]["amc"]["n"] == 2
    assert 0 < rep["timing"]["generated_tokens"] <= 4 * 4
    records = tmp_path / "res.problems.jsonl"
    assert len(records.read_text().splitlines()) == 4
    text = capsys.readouterr().out
    assert "| gsm8k | 2 |" in text and "| **average** | 4 |" in text
    assert main(argv) == 0  # resume: nothing left to generate
    rep2 = json.loads(out.read_text())
    assert rep2["timing"]["resumed_problems"] == 4 and rep2["timing"]["generated_tokens"] == 0
    assert rep2["benchmarks"] == rep["benchmarks"]


def test_cli_check_grader(shared_data, tmp_path, capsys):
    from gmpo.cli import main

    out = tmp_path / "cg.json"
    assert main(["eval", "--check-grader", "--benchmarks", "math500,gsm8k,aime24,amc", "--limit", "25",
                 "--data-dir", str(shared_data), "--out", str(out)]) == 0
    rep = json.loads(out.read_text())["check_grader"]
    assert set(rep) == {"math500", "gsm8k", "aime24"}  # amc has no reference solutions
    assert rep["math500"]["agreement"] == 1.0 and rep["gsm8k"]["agreement"] == 1.0
    assert rep["math500"]["false_accepts"] == 0 and rep["math500"]["cross_pairs"] >= 20
    assert "| math500 | 25 | 25 | 100.0% |" in capsys.readouterr().out


def test_cli_help_documents_every_option(capsys):
    from gmpo.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    text = capsys.readouterr().out
    for opt in ["--model", "--benchmarks", "--data-dir", "--limit", "--samples", "--temperature", "--top-p",
                "--max-new-tokens", "--template", "--out", "--batch-size", "--bf16", "--device", "--check-grader",
                "--seed", "--timeout", "--fallback", "--backend", "--dtype", "--no-resume", "--system-prompt"]:
        assert opt in text
    assert "qwen_math" in text and "drgrpo_amc" in text
