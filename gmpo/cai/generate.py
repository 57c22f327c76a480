"""The critique -> revision pipeline of ``gmpo cai generate`` (Bai et al. 2022, arXiv 2212.08073, section 3.1).

For every prompt: the model's initial answer; then per round a principle drawn (seeded:
:meth:`gmpo.cai.constitution.Constitution.draw`) from the constitution, a critique of the current answer
against that principle, and a revision given the critique. The conversations the model sees::

    initial:   [few-shot..., user: PROMPT]
    critique:  [few-shot..., user: PROMPT, assistant: CURRENT, user: principle.critique]
    revision:  [... critique conversation, assistant: CRITIQUE, user: principle.revision]

Prompts run in batches of ``batch_size``; each stage of a batch is one client call (all its prompts at once).

Resuming: OUT/records.jsonl gets one line per finished prompt after each batch (fsynced); a rerun with the
same settings skips every prompt id already there, so finished prompts are never redone. OUT/meta.json pins
the settings that change the data (constitution, rounds, seed, few-shot count, lengths, temperature): a rerun
with other settings is refused instead of mixing two datasets. The dataset files are rewritten from all
records at the end of every run (:func:`gmpo.cai.data.write_dataset`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gmpo.cai.data import read_jsonl, write_dataset

RECORDS = "records.jsonl"
META = "meta.json"


@dataclass
class GenerateSettings:
    """What shapes the generated data (pinned in OUT/meta.json)."""

    rounds: int = 1  # critique -> revision rounds per prompt
    batch_size: int = 16  # prompts per batch (each stage of a batch is one generate call)
    max_new_tokens: int = 128  # tokens per answer, critique and revision
    temperature: float = 0.7  # sampling temperature (0 = greedy)
    seed: int = 0  # seeds the principle draws and the sampling
    fewshot: int = 0  # few-shot conversations of the constitution prepended to every conversation


def _stage_seed(seed: int, first_id: str, stage: str) -> int:
    return int(hashlib.sha256(f"{seed}:{first_id}:{stage}".encode()).hexdigest()[:8], 16)


def _check_meta(out: Path, meta: dict) -> None:
    """Write meta.json, or refuse to continue a directory generated with other settings."""
    path = out / META
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if k != "model" and old.get(k) != v}
        if diff:
            desc = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds data generated with other settings ({desc}): use another --out, "
                             "or rerun with the same settings to continue")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2))


def _append(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_batch(client, batch: list[dict], constitution, s: GenerateSettings) -> list[dict]:
    """Generate the records of one batch of {id, prompt}: initial answer, then `s.rounds` critique/revision rounds."""
    shots = constitution.fewshot_messages(s.fewshot)
    first = batch[0]["id"]
    gen = lambda convs, stage: client.chat(convs, s.max_new_tokens, s.temperature,  # noqa: E731
                                           _stage_seed(s.seed, first, stage))
    current = gen([shots + [{"role": "user", "content": r["prompt"]}] for r in batch], "initial")
    recs = [{"id": r["id"], "prompt": r["prompt"], "initial": a, "rounds": [], "constitution": constitution.name}
            for r, a in zip(batch, current)]
    for k in range(s.rounds):
        principles = [constitution.draw(s.seed, r["id"], k) for r in batch]
        convs = [shots + [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": cur},
                          {"role": "user", "content": p.critique}]
                 for r, cur, p in zip(batch, current, principles)]
        critiques = gen(convs, f"critique{k}")
        convs = [c + [{"role": "assistant", "content": cr}, {"role": "user", "content": p.revision}]
                 for c, cr, p in zip(convs, critiques, principles)]
        current = gen(convs, f"revision{k}")
        for rec, p, cr, rv in zip(recs, principles, critiques, current):
            rec["rounds"].append({"principle": p.name, "critique_request": p.critique, "critique": cr,
                                  "revision_request": p.revision, "revision": rv})
    return recs


def generate(client, prompts: list[dict], constitution, out: str | Path, settings: GenerateSettings,
             model: str = "", log=print) -> dict:
    """Run (or continue) generation for `prompts` into `out`; returns {"done", "new", "skipped", "splits", "wall_s"}.

    Prompts whose id is already in OUT/records.jsonl are skipped; the dataset files are rewritten from every
    record of the prompts asked for (in their order) at the end.
    """
    if settings.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {settings.rounds}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {settings.batch_size}")
    out = Path(out)
    _check_meta(out, {**asdict(settings), "batch_size": None, "constitution": constitution.name,
                      "constitution_fingerprint": constitution.fingerprint, "model": model})
    done = {r["id"]: r for r in read_jsonl(out / RECORDS)}
    todo = [r for r in prompts if r["id"] not in done]
    skipped = len(prompts) - len(todo)
    if skipped:
        log(f"gmpo cai generate: {skipped} of {len(prompts)} prompts already done in {out / RECORDS}; continuing")
    t0 = time.perf_counter()
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start:start + settings.batch_size]
        recs = run_batch(client, batch, constitution, settings)
        _append(out / RECORDS, recs)
        done.update({r["id"]: r for r in recs})
        n = start + len(batch)
        rate = n / max(time.perf_counter() - t0, 1e-9)
        log(f"gmpo cai generate: {n}/{len(todo)} prompts ({rate * 60:.1f}/min)")
    ordered = [done[r["id"]] for r in prompts if r["id"] in done]
    splits = write_dataset(out, ordered)
    return {"done": len(ordered), "new": len(todo), "skipped": skipped, "splits": splits,
            "wall_s": time.perf_counter() - t0}


__all__ = ["GenerateSettings", "generate", "run_batch"]
