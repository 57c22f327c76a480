"""Prompt files, the fixed held-out split, and the output dataset of ``gmpo cai generate``.

Held-out split (:func:`split_prompts`): every prompt gets the key sha256(f"{seed}:{prompt}"); the
``eval_size`` prompts with the smallest keys are held out for evaluation, the rest are for training. The
split depends only on the prompt texts and the seed (not on file order), so it is the same for every
command and run; with the defaults (seed 0, 200 prompts) ``redteam_prompts.jsonl`` splits into 1,300
training and 200 held-out prompts. Prompt ids are content hashes (``sha1(prompt)[:12]``), which is what
resuming keys on.

Output (:func:`write_dataset`), in OUT/, each as ``NAME.jsonl`` and ``NAME.parquet`` (load with
``datasets.load_dataset("parquet", data_files={"sft": "OUT/sft.parquet", ...})``):

- ``full``: id, prompt, initial (the first answer), rounds (a list of {principle, critique, revision}),
  final (the last revision), constitution (its name);
- ``sft``: id, prompt, response (= final), messages ([user, assistant]);
- ``prefs``: id, prompt, chosen (= final revision), rejected (= initial answer);
- ``prompts/train.jsonl`` and ``prompts/eval.jsonl``: id, prompt of the two halves of the split
  (the RLAIF recipe trains on the first and evaluates on the second).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def prompt_id(prompt: str) -> str:
    """A stable id of a prompt: the first 12 hex digits of its sha1."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def read_prompts(path: str | Path, field: str = "prompt") -> list[dict]:
    """[{id, prompt}] from a jsonl / json / parquet file with a `field` column (duplicates dropped, order kept)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    elif p.suffix == ".json":
        rows = json.loads(p.read_text(encoding="utf-8"))
    else:
        rows = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}: line {i + 1} is not JSON: {e}") from None
    out, seen = [], set()
    for i, r in enumerate(rows):
        text = r.get(field) if isinstance(r, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{p}: row {i + 1}: field '{field}' must be a non-empty string, got {text!r:.60}")
        pid = prompt_id(text)
        if pid not in seen:
            seen.add(pid)
            out.append({"id": pid, "prompt": text})
    if not out:
        raise ValueError(f"{p}: no prompts")
    return out


def split_prompts(rows: list[dict], eval_size: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval): the `eval_size` rows with the smallest sha256(f"{seed}:{prompt}") are held out;
    both halves keep the input order."""
    if eval_size < 0 or eval_size >= len(rows):
        raise ValueError(f"eval_size must be in [0, {len(rows) - 1}] for {len(rows)} prompts, got {eval_size}")
    key = lambda r: hashlib.sha256(f"{seed}:{r['prompt']}".encode("utf-8")).hexdigest()  # noqa: E731
    held = {r["id"] for r in sorted(rows, key=key)[:eval_size]}
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write rows as JSON lines atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a crash mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def dataset_rows(records: list[dict]) -> dict[str, list[dict]]:
    """The full / sft / prefs splits of generation records ({id, prompt, initial, rounds, constitution})."""
    full, sft, prefs = [], [], []
    for r in records:
        final = r["rounds"][-1]["revision"] if r["rounds"] else r["initial"]
        full.append({"id": r["id"], "prompt": r["prompt"], "initial": r["initial"], "rounds": r["rounds"],
                     "final": final, "constitution": r.get("constitution", "")})
        sft.append({"id": r["id"], "prompt": r["prompt"], "response": final,
                    "messages": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": final}]})
        prefs.append({"id": r["id"], "prompt": r["prompt"], "chosen": final, "rejected": r["initial"]})
    return {"full": full, "sft": sft, "prefs": prefs}


def write_dataset(out: Path, records: list[dict]) -> dict[str, int]:
    """Write full / sft / prefs as jsonl and parquet under `out`; {split: rows}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = {}
    for name, rows in dataset_rows(records).items():
        write_jsonl(out / f"{name}.jsonl", rows)
        if rows:
            tmp = out / f".{name}.parquet.tmp"
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            os.replace(tmp, out / f"{name}.parquet")
        counts[name] = len(rows)
    return counts


__all__ = ["dataset_rows", "prompt_id", "read_jsonl", "read_prompts", "split_prompts", "write_dataset", "write_jsonl"]
