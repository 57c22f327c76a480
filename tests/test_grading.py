"""Answer extraction, math-verify grading, hard timeouts and reward-hacking probes."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from gmpo import grading
from gmpo.grading import pool, server as grading_server
from gmpo.grading import GradeResult, extract_answer, extract_boxed, grade, verify


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("text,expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # the LAST box
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),  # nested braces
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not close the box
    (r"\fbox{12}", "12"),
    (r"or $\framebox{204}$ minutes", "204"),
    (r"so the answer is $\boxed 7$.", "7"),
    (r"\boxed{}", ""),
    (r"\boxed{ }", ""),
    (r"truncated \boxed{3", None),
    ("no box here", None),
    ("", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    (r"We find $x=2$, so \boxed{2}. The answer is 3.", "2"),  # box wins over phrases
    ("The answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
    ("Thus the answer is 3.5.", "3.5"),
    ("Final Answer: The final answer is $9$. I hope it is correct.", "9"),
    ("Janet makes 9 * 2 = $18.\n#### 18", "18"),
    ("so #### 1,234", "1,234"),
    ("**Answer:** 12", "12"),
    ("The answer is 3. Wait, no: the answer is 4.", "4"),  # the last phrase
    ("First 12 apples, then 1,500 pears and finally -3.25 kg", "-3.25"),  # last number
    ("She pays 1,500 dollars", "1500"),
    ("no numbers at all", None),
    ("The answer is $18 per day.", "18"),  # a lone $ is currency; plain unit words dropped
    ("The answer is 18 dollars.", "18"),
    ("So the answer is $1,200 per month.", "1,200"),
    ("The answer is 12 km/h.", "12"),
    ("The answer is 2 pi.", "2 pi"),  # not a unit: kept whole
    ("the answer is 3 or 4 apples", "3 or 4 apples"),  # two candidates: kept whole (graded wrong)
    ("<think>maybe 3</think> <answer> 5 </answer>", "5"),  # R1 template
    ("<think>x</think><answer>The answer is $\\frac12$.</answer>", r"\frac12"),
    ("<think>x</think><answer></answer> 7", ""),  # empty answer tag: wrong, no fallback
    (r"\textbf{(073)}", "073"),  # bold answer with no box: the last number
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# ---------------------------------------------------------------- verification

@pytest.mark.parametrize("pred,gold,ok", [
    ("18", "18", True),
    ("18.0", "18", True),
    ("1,000", "1000", True),
    ("17", "18", False),
    (r"\frac{1}{2}", "0.5", True),
    (r"\dfrac12", r"\frac{1}{2}", True),
    (r"\left(3, \frac{\pi}{2}\right)", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"(3, \pi)", r"\left( 3, \frac{\pi}{2} \right)", False),
    (r"2\sqrt{2}", r"\sqrt{8}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    (r"\text{Evelyn}", r"\text{Evelyn}", True),
    ("4, 3", "3, 4", True),  # sets compare as sets
    ("27", 27.0, True),  # AMC float golds
    ("27.0000001", 27.0, True),
    ("26", 27.0, False),
    (r"\frac{27}{1}", 27.0, True),
    ("0.25", 0.25, True),
    (r"\frac14", 0.25, True),
    ("2", ["1", "2"], True),  # any-of list golds (OlympiadBench)
    ("3", ["1", "2"], False),
    ("2", [], False),
    (None, "2", False),
    ("", "2", False),
    ("  ", "2", False),
    (r"\textbf{(073)}", "073", True),  # AIME's bold answer-choice style
    ("**5**", "5", True),
    (r"\textbf{}", "1", False),
    ("8.7e8", r"8.7 \times 10^{8}", True),  # e-notation is not Euler's e (Minerva)
    ("8.8e8", r"8.7 \times 10^{8}", False),
    ("1e-3", r"10^{-3}", True),
    ("7e37", r"7 \times 10^{37}", True),
    ("-1./3", r"-\frac{1}{3}", True),
    ("E_{1},E_{2}", "E_1, E_2", True),
    ("x_{1}", "x_2", False),
])
def test_verify(pred, gold, ok):
    assert verify(pred, gold) is ok


def test_verify_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="timeout"):
        verify("1", "1", timeout=0)
    with pytest.raises(ValueError, match="empty"):
        verify("1", "  ")
    with pytest.raises(TypeError, match="gold answer"):
        verify("1", None)


def test_grade_returns_prediction():
    r = grade(r"Adding gives $\boxed{\frac{3}{4}}$.", "0.75")
    assert r == GradeResult(correct=True, pred=r"\frac{3}{4}")
    r = grade("I am not sure.", "0.75")
    assert r == GradeResult(correct=False, pred=None)


# ---------------------------------------------------------------- reward-hacking probes

def test_probe_empty_box_is_wrong_and_does_not_fall_back():
    # the box is the final-answer position; an empty one must not fall back to "the last number" (4)
    assert grade(r"2 + 2 = 4, so \boxed{}", "4").correct is False
    assert grade(r"2 + 2 = 4, so \boxed{}", "4").pred == ""


@pytest.mark.parametrize("completion", [
    r"\boxed{3, 4, 5}",
    r"\boxed{3 \text{ or } 4}",
    "the answer is 3 or 4",
    r"the answer is $3, 4$",
    r"\boxed{\{3, 4, 5\}}",
])
def test_probe_several_candidates_is_wrong(completion):
    assert grade(completion, "4").correct is False


def test_probe_answer_outside_final_position_is_graded_by_final_answer():
    assert grade(r"Maybe \boxed{4}? No, recheck: \boxed{5}", "4").correct is False
    assert grade("It could be 4. The answer is 5.", "4").correct is False
    assert grade(r"I first thought 5 but the final answer is \boxed{4}", "4").correct is True


def test_probe_restated_question_is_wrong(shared_data):
    """Echoing the question (no answer given) must not be graded correct on real problems."""
    hits = 0
    n = 0
    with open(shared_data / "gsm8k_test.jsonl") as f:
        for line in list(f)[:100]:
            row = json.loads(line)
            gold = row["answer"].split("####")[-1].strip()
            hits += grade(row["question"], gold, question=row["question"]).correct
            n += 1
    with open(shared_data / "math500.jsonl") as f:
        for line in list(f)[:100]:
            row = json.loads(line)
            hits += grade(row["problem"], row["answer"], question=row["problem"]).correct
            n += 1
    assert n == 200
    # without question= the last-number fallback takes 7 of these 200 for an answer (measured)
    assert hits == 0, f"{hits} restated questions graded correct"


# ---------------------------------------------------------------- timeouts and threads

def test_pathological_input_times_out_as_wrong_from_a_thread():
    result = []
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: result.append(verify("9^{9^{9^{9}}}", "5", timeout=0.5)))
    th.start()
    th.join(timeout=30)
    assert result == [False]
    assert time.monotonic() - t0 < 10  # bounded by the deadline (+ worker start-up), not sympy
    assert verify(r"\sqrt{4}", "2")  # the grader still works afterwards


def test_server_that_stops_answering_is_abandoned_by_the_caller():
    """The caller's own deadline: a server that goes silent is killed after timeout + grace, not waited on."""
    server = pool._Server()
    try:
        os.kill(server.proc.pid, signal.SIGSTOP)  # a server stuck for any reason
        t0 = time.monotonic()
        with pytest.raises(pool.ServerDied, match="silent"):
            server.run([(r"\frac{1}{2}", "0.5")], 0.3)
        assert time.monotonic() - t0 < 0.3 + pool.GRACE_S + 5.0  # never waits forever (slack: a loaded CPU)
    finally:
        server.close()
    assert server.proc.poll() is not None  # killed


def test_concurrent_threads_agree_with_serial():
    cases = [(r"\frac{%d}{4}" % i, "%g" % (i / 4)) for i in range(12)] + [("7", r"\frac{14}{3}")]
    expected = [verify(p, g, timeout=10) for p, g in cases]
    got = [None] * len(cases)

    def work(k):  # 4 threads, 4 servers starting at once: a generous timeout, this checks agreement, not speed
        for i in range(k, len(cases), 4):
            got[i] = verify(*cases[i], timeout=10)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert got == expected == [True] * 12 + [False]


def test_per_call_cost_is_small():
    verify(r"\frac{1}{3}", r"\frac{2}{6}")  # warm the worker
    t0 = time.perf_counter()
    for i in range(20):
        assert verify(r"\frac{%d}{3}" % (i + 1), r"\frac{%d}{6}" % (2 * i + 2))
    per_call = (time.perf_counter() - t0) / 20
    assert per_call < 0.1, per_call  # ~4 ms measured on an idle 2-core CPU
    t0 = time.perf_counter()
    for i in range(200):
        verify(str(i), str(i + 1))  # plain numbers never leave the process
    assert (time.perf_counter() - t0) / 200 < 1e-3


# ---------------------------------------------------------------- real data

def _box_of_solution(s):
    return extract_boxed(s)


def test_math500_reference_solutions_grade_correct(shared_data):
    with open(shared_data / "math500.jsonl") as f:
        rows = [json.loads(line) for line in list(f)[:40]]
    ok = sum(grade(r["solution"], r["answer"]).correct for r in rows)
    assert ok >= 39, ok


def test_amc_float_golds(shared_data):
    with open(shared_data / "amc23.jsonl") as f:
        rows = [json.loads(line) for line in f][:10]
    for r in rows:
        assert isinstance(r["answer"], float)
        assert grade(rf"so \boxed{{{int(r['answer'])}}}", r["answer"]).correct
        assert not grade(rf"so \boxed{{{int(r['answer']) + 1}}}", r["answer"]).correct


def test_strip_question_echo_keeps_own_work():
    q = "Wendi has 20 chickens and feeds each 3 cups. How many cups does she need for 20 chickens?"
    c = q + "\nEach chicken gets 3 cups, so 3 * 20 = 60.\nThe answer is 60\nDone."
    assert grade(c, "60", question=q) == GradeResult(True, "60")
    # echoing the question only: without the question the last number (20) would be taken
    assert grade("Restating: " + q, "20").correct is True
    r = grade("Restating: " + q, "20", question=q)
    assert r.correct is False and r.pred is None
    assert grading.strip_question_echo("short 20", q) == "short 20"


def test_truncated_completion_is_graded_by_explicit_answers_only():
    cut = "The feed left over is 100 / 20 = "  # hit the token budget mid-computation
    assert grade(cut, "20") == GradeResult(True, "20")
    assert grade(cut, "20", truncated=True) == GradeResult(False, None)
    assert grade(r"so \boxed{20} and then more text", "20", truncated=True).correct is True
    assert grade("The answer is 20. Let me double-check by", "20", truncated=True).correct is True
    assert extract_answer("x = 3 and 4", last_number=False) is None


# ---------------------------------------------------------------- explicit answers that repeat the question

MATRIX_Q = (r"Compute $\begin{pmatrix} 20/3 & 4/3 \\ -8/3 & 8/3 \end{pmatrix} \begin{pmatrix} 1 & 0 \\ 0 & 1 "
            r"\end{pmatrix}.$")
MATRIX = r"\begin{pmatrix} 20/3 & 4/3 \\ -8/3 & 8/3 \end{pmatrix}"


@pytest.mark.parametrize("completion", [
    rf"The identity leaves it unchanged: $\boxed{{{MATRIX}}}$",
    rf"<think>identity</think> <answer>{MATRIX}</answer>",
    rf"Multiplying by the identity changes nothing, so the answer is ${MATRIX}$.",
])
def test_explicit_answer_that_repeats_the_question_is_kept_whole(completion):
    """Issue 16 defect 1: the echo stripper cut a right answer copied from the question (scored 0)."""
    r = grade(completion, MATRIX, question=MATRIX_Q)
    assert r.correct is True and r.pred.replace("$", "").strip() == MATRIX
    assert grading.final_answer(completion, MATRIX_Q) == r.pred
    from gmpo.rewards import math_answer

    assert math_answer([MATRIX_Q], [completion], answer=[MATRIX]) == [1.0]


def test_echo_is_stripped_only_for_the_last_number_fallback():
    q = "A farm has 20 chickens and 3 cows. How many animals are there if 20 chickens more arrive?"
    assert grading.final_answer(q, q) is None  # only an echo: no answer
    assert grading.final_answer(q + " So 43 in all.", q) == "43"
    assert grading.final_answer(q + r" \boxed{20 chickens and 3 cows}", q) == "20 chickens and 3 cows"
    assert grading.final_answer(q, q, last_number=False) is None
    assert grading.final_answer(q, None) == "20"  # without the question the echo's last number is taken


def _math_train(shared_data):
    pq = pytest.importorskip("pyarrow.parquet")
    t = pq.read_table(shared_data / "math_lvl3to5_8k_train.parquet", columns=["question", "gt_answer"]).to_pydict()
    return t["question"], t["gt_answer"]


def _boxed_gold_failures(questions, golds):
    from gmpo.rewards import math_answer

    scores = []
    for i in range(0, len(golds), 512):  # batches, as training scores them
        g = golds[i:i + 512]
        scores += math_answer(questions[i:i + 512], ["\\boxed{" + x + "}" for x in g], answer=g)
    return [(i, golds[i]) for i, s in enumerate(scores) if s != 1.0]


def test_every_math_train_gold_boxed_verbatim_grades_correct(shared_data):
    """All 8,521 non-empty golds of the MATH level 3-5 train set (21 failed before the fix; ~2 s)."""
    questions, golds = _math_train(shared_data)
    assert len(golds) == 8523
    keep = [i for i, g in enumerate(golds) if g.strip()]
    assert len(keep) == 8521  # two rows (5054, 5158) have an empty gold: nothing to box
    failures = _boxed_gold_failures([questions[i] for i in keep], [golds[i] for i in keep])
    assert failures == []


def test_every_math500_gold_boxed_verbatim_grades_correct(shared_data):
    with open(shared_data / "math500.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 500
    assert _boxed_gold_failures([r["problem"] for r in rows], [r["answer"] for r in rows]) == []


# ---------------------------------------------------------------- pathological batches (issue 16 defect 7)

TOWERS = [f"\\boxed{{{b}^{{{b}^{{{b}}}}}}}" for b in range(9, 9 + 64)]  # 64 distinct, e.g. \boxed{9^{9^{9}}}
NORMAL = [  # (completion, gold, score): comparisons that need math-verify, right and wrong
    (r"so \boxed{\frac{1}{2}}", "0.5", 1.0), (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", 1.0), (r"\boxed{\frac{2}{3}}", "0.5", 0.0),
    (r"\boxed{(1, 2)}", r"\left( 1, 2 \right)", 1.0), (r"\boxed{3\pi}", r"2\pi", 0.0),
]


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in kids.read_text().split()] if kids.exists() else []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_pathological_batch_costs_about_two_timeouts_and_normal_answers_still_grade():
    """Issue 16 defect 7: 64 distinct power towers plus normal answers in one math_answer call at the default
    timeout. Towers are too large to compare (decided in-process); normal verdicts are right."""
    from gmpo.rewards import math_answer

    math_answer(["q"], [r"\boxed{\sqrt{4}}"], answer=["2"])  # a warm server: start-up is paid once per process
    comps = [c for c, _, _ in NORMAL[:3]] + TOWERS + [c for c, _, _ in NORMAL[3:]]
    golds = [g for _, g, _ in NORMAL[:3]] + ["5"] * 64 + [g for _, g, _ in NORMAL[3:]]
    before = grading.grader_stats()
    t0 = time.monotonic()
    scores = math_answer(["q"] * len(comps), comps, answer=golds)
    wall = time.monotonic() - t0
    assert scores == [s for _, _, s in NORMAL[:3]] + [0.0] * 64 + [s for _, _, s in NORMAL[3:]]
    after = grading.grader_stats()
    assert after["too_large"] - before["too_large"] == 64 and after["timeouts"] == before["timeouts"]
    assert wall < 2.5 * grading.DEFAULT_TIMEOUT, f"64 pathological completions took {wall:.2f}s"


def test_a_flood_of_slow_comparisons_shares_one_timeout():
    """The process pool's own bound, without the too-large check: 64 slow comparisons (towers sent straight
    to math-verify) are paused after their first CPU slice and then share ONE timeout (one round of about
    ``timeout`` seconds; 64 x 3 = 192 s if each paid its own); the quick ones of the batch are answered
    right. The rest of the wall time is fixed cost (64 forks and first slices: ~1 s on an idle 2-core CPU,
    several seconds on a loaded one; the benchmark reports the whole on a quiet machine)."""
    timeout = 3.0
    quick = [(r"\frac{2}{4}", "0.5", True), (r"\frac{2}{3}", "0.5", False), ("x = 5", "5", True)]
    jobs = [(p, g) for p, g, _ in quick] + [(t[7:-1], "5") for t in TOWERS]
    p = pool.MathVerifyPool()
    try:
        assert p.run([(r"\sqrt{4}", "2")], 5.0) == [True]  # start-up
        t0 = time.monotonic()
        out = p.run(jobs, timeout)
        wall = time.monotonic() - t0
        assert out == [ok for _, _, ok in quick] + [False] * 64
        assert p.n_timeouts >= 64  # (a quick one may time out on a loaded CPU: it is wrong anyway)
        stats = p.last_stats
        assert stats["rounds"] == 1 and timeout <= stats["round_s"] < timeout + 1.0, stats
        assert wall < stats["wall_s"] + 1.0 and wall < 60, (wall, stats)
    finally:
        p.close()


def test_too_large():
    for big in ["9^{9^{9}}", "10^{10^{10}}", "2^{2^{22}}", "9^{9^9}", "1000000!", r"\frac{9^{9^{9}}}{2}",
                "2^{10000000}"]:
        assert grading.too_large(big), big
    for fine in ["2^{100}", "3^{3^3}", "2^{2^{20}}", "9^99", "100!", "x^{9^{9}}", "0^{9^{9}}", "1^{10^{10}}", "72",
                 "3^{x}", "12!+7!", "5^{}"]:
        assert not grading.too_large(fine), fine
    assert verify("2^{100}", "1267650600228229401496703205376")  # large but fine: still compared


def test_timeout_option_default_and_validation():
    import inspect

    from gmpo.rewards import gsm8k_answer, math_answer

    assert grading.DEFAULT_TIMEOUT == 1.0  # the official GMPO code's value (was 5 s)
    for fn in (math_answer, gsm8k_answer, grade, verify):
        assert inspect.signature(fn).parameters["timeout"].default == 1.0
    verify("1/2", "0.5")  # warm
    t0 = time.monotonic()
    assert math_answer(["q"], [TOWERS[0]], answer=["5"], timeout=0.3) == [0.0]
    assert time.monotonic() - t0 < 0.3 + 1.5
    for bad in (0, -1, float("nan"), "1", True):
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            math_answer(["q"], [r"\boxed{1}"], answer=["1"], timeout=bad)
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            gsm8k_answer(["q"], ["1"], answer=["1"], timeout=bad)


def test_killed_comparisons_leave_no_processes_behind():
    """Timed-out comparisons are killed and reaped; killing the server takes its paused children with it."""
    towers = [(t[7:-1], "5") for t in TOWERS[:8]]  # straight to math-verify (no too-large check)
    p = pool.MathVerifyPool()
    try:
        assert p.run(towers[:1], 0.2) == [False]
        server = p._idle[-1]
        kids = _children(server.proc.pid)
        assert 1 <= len(kids) <= grading_server.SLOTS + 2  # idle children only; the killed one was reaped
        result = []
        th = threading.Thread(target=lambda: result.append(p.run(towers, 30.0)))
        th.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_children(server.proc.pid)) < 8:
            time.sleep(0.05)
        busy = _children(server.proc.pid)
        assert len(busy) >= 8
        os.kill(server.proc.pid, signal.SIGKILL)  # the server dies mid-batch (OOM killer, a bug)
        th.join(timeout=30)
        assert result == [[False] * 8]  # counted as wrong, not hung
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and not all(_gone(k) for k in busy):
            time.sleep(0.05)
        assert all(_gone(k) for k in busy), "children outlived their server"
        assert p.run([(r"\sqrt{4}", "2")], 5.0) == [True]  # a fresh server serves the next call
    finally:
        p.close()
