"""Held-out accuracy during training: greedy decoding of the eval split, scored by the first reward function.

It shares the generation path of ``gmpo eval`` (:func:`gmpo.eval.runner.generate`: the same
:class:`gmpo.data.prompts.PromptEncoder`, so prompts are token-for-token the ones training sees); only the
verdict differs: the training reward (> 0.5 counts as correct) instead of the benchmark grader.
"""
from __future__ import annotations

from gmpo.batch import reward_inputs
from gmpo.data.prompts import PromptEncoder
from gmpo.eval.runner import generate
from gmpo.rollout.base import SamplingParams


def heldout_accuracy(engine, tokenizer, eval_ds, data_cfg, reward_runner, max_new_tokens: int,
                     stop: list[str] | None = None, batch_size: int = 256, dist=None) -> float:
    """Greedy accuracy on `eval_ds`: the fraction of prompts whose first reward function scores > 0.5.

    reward_runner: a :class:`gmpo.rewards.RewardRunner` (its first function decides). NaN for an empty set.
    dist (a :class:`gmpo.train.dist.Dist`, several ranks): each rank decodes a contiguous slice of the
    set and the correct counts are summed over ranks (every rank returns the same accuracy).
    """
    if len(eval_ds) == 0:
        return float("nan")
    encoder = PromptEncoder.from_config(tokenizer, data_cfg)
    rows = eval_ds.to_list()
    total = len(rows)
    if dist is not None:
        rows = rows[total * dist.rank // dist.world: total * (dist.rank + 1) // dist.world]
    params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0, stop=list(stop or []), seed=0)
    correct = 0
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        _, out = generate(engine, encoder, [r["prompt"] for r in chunk], params)
        prompts, columns = reward_inputs(chunk, 1)
        res = reward_runner(prompts, list(out.texts), columns)
        first = next(iter(res.per_fn.values()))
        correct += int((first.float() > 0.5).sum())
    if dist is not None:
        import torch

        correct = int(dist.all_reduce(torch.tensor([float(correct)], device=dist.device), "sum", "held-out accuracy").item())
    return correct / total
