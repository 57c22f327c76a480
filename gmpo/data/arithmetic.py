"""The built-in arithmetic task: "What is 13 + 7? Answer with just the number." with exact integer golds.

A cheap, fully verifiable task for demos and tests: held-out expressions are drawn once from a fixed seed
and never appear in training (see :func:`arithmetic_splits`). ``data.dataset: arithmetic`` selects it.
"""
from __future__ import annotations

import random
from typing import Any

from gmpo.data.errors import DataError

ARITHMETIC_OPS = ("+", "-", "*")

ARITHMETIC_PROMPT = "What is {expr}? Answer with just the number."


def _arith_eval(operands: list[int], ops: list[str]) -> int:
    """Value of operands[0] ops[0] operands[1] ... with the usual precedence (* before + and -)."""
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= x
        else:
            terms.append(x)
            signs.append(1 if op == "+" else -1)
    return terms[0] + sum(s * t for s, t in zip(signs, terms[1:]))


def _arith_decode(index: int, values: int, lo: int, ops: list[str], k: int) -> tuple[list[int], list[str]]:
    """Mixed-radix decode of an expression index into k operands and k-1 operators."""
    operands, chosen = [], []
    for _ in range(k):
        index, r = divmod(index, values)
        operands.append(lo + r)
    for _ in range(k - 1):
        index, r = divmod(index, len(ops))
        chosen.append(ops[r])
    return operands, chosen


def _arith_rows(indices: list[int], values: int, lo: int, ops: list[str], k: int) -> dict[str, list]:
    prompts, answers, exprs = [], [], []
    for idx in indices:
        operands, chosen = _arith_decode(idx, values, lo, ops, k)
        expr = str(operands[0]) + "".join(f" {o} {x}" for o, x in zip(chosen, operands[1:]))
        exprs.append(expr)
        prompts.append(ARITHMETIC_PROMPT.format(expr=expr))
        answers.append(str(_arith_eval(operands, chosen)))
    return {"prompt": prompts, "answer": answers, "expression": exprs}


def arithmetic_splits(cfg) -> tuple[Any, Any]:
    """(train, held-out) arithmetic datasets from an :class:`gmpo.config.ArithmeticConfig`.

    Each expression is an index into the space of all ``num_terms``-operand expressions over
    ``[min_value, max_value]`` and ``ops``; ``random.Random(cfg.seed).sample`` draws distinct indices,
    the first ``n_eval`` are held out and no training row uses them. When the space minus the held-out
    set is smaller than ``n_train``, training rows repeat (every remaining expression once per pass, each
    pass shuffled). Prompts read ``"What is 13 + 7? Answer with just the number."``; the gold is the
    integer as a string (``"-4"`` for negatives).
    """
    from datasets import Dataset


    ops = list(cfg.ops)
    bad = [o for o in ops if o not in ARITHMETIC_OPS]
    if not ops or bad:
        raise DataError(f"data.arithmetic.ops: {bad or 'empty'}: choose from {', '.join(ARITHMETIC_OPS)}")
    if cfg.num_terms < 1:
        raise DataError(f"data.arithmetic.num_terms must be >= 1, got {cfg.num_terms}")
    if cfg.min_value > cfg.max_value:
        raise DataError(f"data.arithmetic.min_value={cfg.min_value} > max_value={cfg.max_value}")
    if cfg.n_train < 1 or cfg.n_eval < 0:
        raise DataError(f"data.arithmetic needs n_train >= 1 and n_eval >= 0, got {cfg.n_train}, {cfg.n_eval}")
    values = cfg.max_value - cfg.min_value + 1
    space = values ** cfg.num_terms * len(ops) ** (cfg.num_terms - 1)
    if cfg.n_eval >= space:
        raise DataError(
            f"data.arithmetic: only {space} distinct expressions exist, so n_eval={cfg.n_eval} leaves none "
            "for training; widen min_value/max_value, add ops or terms, or lower n_eval"
        )
    rng = random.Random(cfg.seed)
    order = rng.sample(range(space), min(space, cfg.n_eval + cfg.n_train))
    held, train = order[: cfg.n_eval], order[cfg.n_eval:]
    pool = list(train)
    while len(train) < cfg.n_train:  # small space: repeat the non-held-out expressions, reshuffled
        rng.shuffle(pool)
        train = train + pool[: cfg.n_train - len(train)]
    k = cfg.num_terms
    return (
        Dataset.from_dict(_arith_rows(train, values, cfg.min_value, ops, k)),
        Dataset.from_dict(_arith_rows(held, values, cfg.min_value, ops, k)),
    )
