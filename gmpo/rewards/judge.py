"""``constitution_judge``: an AI-feedback reward (RLAIF, Bai et al. 2022, arXiv 2212.08073, section 4) that
scores completions against a constitution with a judge model.

Judge: a local Hugging Face model (``judge``: a hub name, a directory, ``smollm2-135m-instruct``, or the
policy's own base by naming the same path) or an OpenAI-compatible endpoint (``endpoint``: ``gmpo serve``,
vLLM, a hosted API). The question asked is the constitution's overall judge question, or one principle's
(``principle``).

Modes:

- ``pointwise``: each completion alone; reward = P(Yes) (``score: yesno``) or a parsed 1-10 rating mapped to
  [0, 1] (``score: scale``). See :mod:`gmpo.cai.judges`.
- ``pairwise``: each completion against every other completion of its prompt's group, in both orders to
  cancel position bias; reward_i = mean over j != i of (P(i > j | i shown first) + 1 - P(j > i | j shown
  first)) / 2, the win rate. It matches GMPO's group-relative advantages, and it is invariant to the order of
  the completions in the group (the same queries are asked whatever the order; batches are built in a
  canonical order). Groups are runs of consecutive completions with the same prompt (or ``group_size``). A
  group of one (for example when the reward runner rescores samples one by one after a failed batch) is
  scored pointwise.

Every verdict is cached by (prompt, completion(s), question); endpoint requests time out after ``timeout``
seconds (``retries`` more tries). A failed query raises naming the sample; the trainer's reward-error policy
(``train.reward_errors``: raise, or score 0 and count) decides what happens. Empty completions score
``empty_score`` without asking the judge (an empty answer is not a refusal worth rewarding).
"""
from __future__ import annotations

import threading

from gmpo.rewards.registry import register_reward

OPTIONS = {
    "judge": "judge model: hub name, local directory, or smollm2-135m-instruct (ignored with endpoint)",
    "endpoint": "OpenAI-compatible server URL; '' = the local judge model",
    "endpoint_model": "model name sent to the endpoint",
    "mode": "pointwise | pairwise (win rate within the prompt's group, both orders)",
    "score": "pointwise score: yesno (P(Yes)) | scale (parsed 1-10 rating)",
    "constitution": "constitution file ('default' = the shipped one)",
    "principle": "principle whose judge question is asked ('' = the constitution's overall question)",
    "timeout": "seconds per endpoint request",
    "retries": "extra tries of a failed endpoint request",
    "batch_size": "queries per local forward pass",
    "concurrency": "endpoint requests in flight",
    "max_chars": "prompt and completion text cut to this many characters in judge queries",
    "group_size": "pairwise group size (0 = runs of consecutive equal prompts)",
    "empty_score": "score of an empty completion (the judge is not asked)",
    "device": "device of the local judge (auto | cpu | cuda)",
}
_LOCK = threading.Lock()
_JUDGES: dict[tuple, object] = {}


def _validate(kw: dict) -> None:
    if kw.get("mode", "pointwise") not in ("pointwise", "pairwise"):
        raise ValueError(f"mode must be pointwise or pairwise, got {kw.get('mode')!r}")
    if kw.get("score", "yesno") not in ("yesno", "scale"):
        raise ValueError(f"score must be yesno or scale, got {kw.get('score')!r}")
    if float(kw.get("timeout", 30.0)) <= 0:
        raise ValueError(f"timeout must be > 0, got {kw.get('timeout')}")
    if int(kw.get("group_size", 0)) < 0:
        raise ValueError(f"group_size must be >= 0, got {kw.get('group_size')}")


def get_judge(judge: str = "smollm2-135m-instruct", endpoint: str = "", endpoint_model: str = "",
              timeout: float = 30.0, retries: int = 1, batch_size: int = 16, concurrency: int = 8,
              max_chars: int = 1500, device: str = "cpu"):
    """The judge for these settings (built once per process and reused, with its cache)."""
    key = (judge, endpoint, endpoint_model, float(timeout), int(retries), int(batch_size), int(concurrency),
           int(max_chars), device)
    with _LOCK:
        if key not in _JUDGES:
            from gmpo.cai.judges import EndpointJudge, LocalJudge

            if endpoint:
                from gmpo.cai.client import EndpointClient

                client = EndpointClient(endpoint, endpoint_model, timeout=timeout, concurrency=concurrency,
                                        retries=retries)
                _JUDGES[key] = EndpointJudge(client, max_chars)
            else:
                from gmpo import models

                model, tok = models.load_model(judge, device=models.resolve_device(device))
                _JUDGES[key] = LocalJudge(model.requires_grad_(False), tok, batch_size, max_chars)
        return _JUDGES[key]


def clear_judges() -> None:
    """Drop every judge built so far (and their caches)."""
    with _LOCK:
        _JUDGES.clear()


def _groups(prompts: list[str], group_size: int) -> list[list[int]]:
    """Index lists of the groups: fixed chunks of `group_size`, or runs of consecutive equal prompts."""
    if group_size > 0:
        return [list(range(s, min(s + group_size, len(prompts)))) for s in range(0, len(prompts), group_size)]
    groups: list[list[int]] = []
    for i, p in enumerate(prompts):
        if groups and prompts[groups[-1][-1]] == p:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _pairwise(judge, prompts, completions, question, idx: list[int], score: str) -> dict[int, float]:
    """Win rates within one group (both orders of every pair); a group of one is scored pointwise."""
    if len(idx) == 1:
        i = idx[0]
        return {i: judge.pointwise([prompts[i]], [completions[i]], question, score)[0]}
    pairs = [(i, j) for i in idx for j in idx if i != j]  # every ordered pair: i shown as A, j as B
    from gmpo.cai.judges import JudgeError

    try:
        p_a = judge.prefer([(prompts[i], completions[i], completions[j]) for i, j in pairs], question)
    except JudgeError as e:  # name the sample shown first in the failed comparison
        if e.index is not None:
            raise JudgeError(f"sample {pairs[e.index][0]}: {e}", pairs[e.index][0]) from None
        raise
    pref = dict(zip(pairs, p_a))  # P(A wins) with A = first index
    return {i: sum((pref[(i, j)] + 1.0 - pref[(j, i)]) / 2 for j in idx if j != i) / (len(idx) - 1) for i in idx}


@register_reward("constitution_judge", options=OPTIONS, validate=_validate)
def constitution_judge(prompts, completions, judge: str = "smollm2-135m-instruct", endpoint: str = "",
                       endpoint_model: str = "", mode: str = "pointwise", score: str = "yesno",
                       constitution: str = "default", principle: str = "", timeout: float = 30.0, retries: int = 1,
                       batch_size: int = 16, concurrency: int = 8, max_chars: int = 1500, group_size: int = 0,
                       empty_score: float = 0.0, device: str = "cpu", **columns) -> list[float]:
    """AI-feedback reward: a judge model scores each completion against a constitution (pointwise P(yes) or a 1-10 rating, or the pairwise win rate within its group)."""
    from gmpo.cai.constitution import load_constitution
    from gmpo.cai.judges import JudgeError

    _validate({"mode": mode, "score": score, "timeout": timeout, "group_size": group_size})
    question = load_constitution(constitution).judge_question(principle)
    j = get_judge(judge, endpoint, endpoint_model, timeout, retries, batch_size, concurrency, max_chars, device)
    prompts = [p if isinstance(p, str) else str(p) for p in prompts]
    out = [float(empty_score)] * len(completions)
    live = [i for i, c in enumerate(completions) if c.strip()]
    if mode == "pointwise":
        try:
            scores = j.pointwise([prompts[i] for i in live], [completions[i] for i in live], question, score)
        except JudgeError as e:
            if e.index is not None:
                raise JudgeError(f"sample {live[e.index]}: {e}", live[e.index]) from None
            raise
        for i, s in zip(live, scores):
            out[i] = s
        return out
    keep = set(live)
    for g in _groups(prompts, group_size):
        g = [i for i in g if i in keep]
        if g:
            for i, s in _pairwise(j, prompts, completions, question, g, score).items():
                out[i] = s
    return out


__all__ = ["clear_judges", "constitution_judge", "get_judge"]
