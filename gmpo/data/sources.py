"""Training and held-out prompts: loading by hub name or local path, field mapping, the train/eval pair.

Sources (``data.dataset`` / ``data.eval_dataset``):

- ``arithmetic``: the built-in synthetic task (:func:`gmpo.data.arithmetic.arithmetic_splits`).
- a local file: ``.jsonl``, ``.json`` (a list of records, ``{"<key>": [records]}``, or JSON lines),
  ``.parquet``, ``.csv``, ``.arrow`` (a Hugging Face ``save_to_disk`` shard), or a directory written by
  ``save_to_disk`` (or any directory ``datasets.load_dataset`` understands).
- anything else: a Hugging Face hub dataset name, loaded with ``datasets.load_dataset(name, subset, split)``.

Splits accept the ``datasets`` slice syntax (``train[:100]``, ``test[10%:]``); for a single local file the
split *name* is ignored and only the slice applies. The question column (``prompt_field``) becomes
``prompt`` and the gold column (``answer_field``, dotted paths such as ``reward_model.ground_truth`` reach
into struct columns) becomes ``answer``; every other column is kept and reaches reward functions as a
keyword argument. A column already named ``prompt``/``answer`` that is not the mapped field is kept as
``source_prompt``/``source_answer``.

A malformed row raises :class:`DataError` naming the file, the row (``line N`` for JSON lines, else
``row N``, both 1-based) and the field.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gmpo.data.arithmetic import arithmetic_splits
from gmpo.data.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
ARITHMETIC = "arithmetic"


# ----------------------------------------------------------------------------------------------
# loading raw sources

def _split_parts(split: str) -> tuple[str, str]:
    """'train[:100]' -> ('train', '[:100]'); 'test' -> ('test', '')."""
    m = re.fullmatch(r"\s*([^\[\]]*?)\s*(\[[^\[\]]*\])?\s*", split or "")
    if not m:
        raise DataError(f"cannot parse split {split!r}: expected a name with an optional slice, e.g. 'train[:100]'")
    return m.group(1), m.group(2) or ""


def _apply_slice(n: int, split: str) -> range:
    """Rows of a single-file source selected by the slice part of ``split`` (all rows without one)."""
    _, sl = _split_parts(split)
    if not sl:
        return range(n)
    from datasets import ReadInstruction

    try:
        (inst,) = ReadInstruction.from_spec("all" + sl).to_absolute({"all": n})
    except Exception as e:  # datasets raises ValueError/AssertionError with a terse message
        raise DataError(f"cannot apply split slice {sl!r} to {n} rows: {e}") from None
    return range(inst.from_, inst.to)


def _check_record(rec: Any, where: str) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}: {str(rec)[:80]!r}")
    return rec


def _records_to_dataset(records: list[dict], rows: list[int], path: Path, row_word: str, fields: tuple[str, str]):
    """Build a Dataset from records with the union of their keys (missing keys become null).

    The question/gold ``fields`` are checked per record first, so a bad value gets its own message
    rather than pyarrow's complaint about a column that mixes types.
    """
    from datasets import Dataset

    pf, af = fields
    for rec, row in zip(records, rows):
        at = f"{path}: {row_word} {row}"
        for f in fields:
            if f not in rec and "." not in f:
                raise DataError(f"{at}: field '{f}' is missing (fields present: {', '.join(rec) or 'none'})")
        if pf in rec:
            _check_prompt(rec[pf], pf, at)
        if af in rec:
            _check_answer(rec[af], af, at)
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    columns = {k: [r.get(k) for r in records] for k in keys}
    try:
        ds = Dataset.from_dict(columns)
    except Exception as e:  # pyarrow: a column mixing types (e.g. numbers and strings)
        bad = ""
        for k, vals in columns.items():
            present = [(i, type(v).__name__) for i, v in enumerate(vals) if v is not None]
            kinds = {t for _, t in present}
            if len(kinds) > 1:
                first = next(i for i, t in present if t != present[0][1])
                bad = f" column '{k}' mixes {', '.join(sorted(kinds))} (first different value at {row_word} {rows[first]});"
                break
        raise DataError(f"{path}:{bad} cannot build a table: {e}") from None
    return ds


def _read_jsonl(path: Path, text: str, fields: tuple[str, str]):
    records, rows = [], []
    for ln, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {ln}: not valid JSON ({e.msg} at column {e.colno})") from None
        records.append(_check_record(rec, f"{path}: line {ln}"))
        rows.append(ln)
    return _records_to_dataset(records, rows, path, "line", fields), rows, "line"


def _read_json(path: Path, fields: tuple[str, str]):
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines saved as .json
            return _read_jsonl(path, text, fields)
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) != 1:
            raise DataError(
                f"{path}: expected a JSON list of records or an object with one list of records "
                f"(keys found: {', '.join(map(str, obj)) or 'none'})"
            )
        obj = obj[lists[0]]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(obj).__name__}")
    records = [_check_record(r, f"{path}: record {i + 1}") for i, r in enumerate(obj)]
    rows = list(range(1, len(records) + 1))
    return _records_to_dataset(records, rows, path, "record", fields), rows, "record"


def _read_local_file(path: Path, prompt_field: str, answer_field: str):
    """(Dataset, 1-based row numbers, row word) for one local file."""
    from datasets import Dataset

    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, path.read_text(encoding="utf-8"), (prompt_field, answer_field))
    if suffix == ".json":
        return _read_json(path, (prompt_field, answer_field))
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            ds = Dataset(pq.read_table(path))
        elif suffix == ".csv":
            import pyarrow.csv as pacsv

            import csv

            import pyarrow as pa

            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
            # keep the question and gold as text ('007', '1,000' must not become numbers)
            types = {f: pa.string() for f in (prompt_field, answer_field) if f in header}
            ds = Dataset(pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types)))
        elif suffix == ".arrow":
            ds = Dataset.from_file(str(path))
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use one of {', '.join(LOCAL_SUFFIXES)})")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read as {suffix[1:]}: {e}") from None
    return ds, list(range(1, len(ds) + 1)), "row"


def _looks_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.lower().endswith(LOCAL_SUFFIXES) or source.startswith(("/", ".", "~"))


def load_source(source: str, split: str = "train", subset: str = "", prompt_field: str = "prompt", answer_field: str = "answer"):
    """Load a raw source (no field mapping) and return ``(dataset, row_numbers, row_word, where)``.

    ``row_numbers[i]`` is the 1-based line/record/row of dataset row i in its file, used in error
    messages; ``where`` names the file or dataset. ``prompt_field``/``answer_field`` only keep those
    CSV columns as strings (so '007' or '1,000' are not turned into numbers).
    """
    if not source:
        raise DataError("no dataset given: set data.dataset to 'arithmetic', a local file, or a hub dataset name")
    if _looks_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data file not found: {path}")
        if path.is_file():
            ds, rows, word = _read_local_file(path, prompt_field, answer_field)
            keep = _apply_slice(len(ds), split)
            if len(keep) != len(ds):
                ds, rows = ds.select(keep), rows[keep.start:keep.stop]
            return ds, rows, word, str(path)
        return _load_dir(path, split, subset)
    import datasets

    try:
        ds = datasets.load_dataset(source, subset or None, split=split)
    except Exception as e:
        raise DataError(
            f"cannot load dataset '{source}'{f' (subset {subset})' if subset else ''} split '{split}' "
            f"from the Hugging Face hub: {type(e).__name__}: {e} (for a local file, give its path)"
        ) from e
    return ds, list(range(1, len(ds) + 1)), "row", f"{source}[{split}]"


def _load_dir(path: Path, split: str, subset: str):
    import datasets

    if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        obj = datasets.load_from_disk(str(path))
        name, _ = _split_parts(split)
        if isinstance(obj, datasets.DatasetDict):
            if name not in obj:
                raise DataError(f"{path}: no split '{name}' (splits: {', '.join(obj)})")
            obj = obj[name]
        keep = _apply_slice(len(obj), split)
        if len(keep) != len(obj):
            obj = obj.select(keep)
        return obj, [keep.start + i + 1 for i in range(len(obj))], "row", f"{path}[{split}]"
    try:
        ds = datasets.load_dataset(str(path), subset or None, split=split)
    except Exception as e:
        raise DataError(f"{path}: cannot load directory split '{split}': {type(e).__name__}: {e}") from e
    return ds, list(range(1, len(ds) + 1)), "row", f"{path}[{split}]"


# ----------------------------------------------------------------------------------------------
# field mapping and validation

def _field_values(ds, field: str, where: str, row_word: str, rows: list[int]) -> list:
    """Values of ``field`` (a column, or a dotted path into struct columns) for every row."""
    cols = ds.column_names
    if field in cols:
        return list(ds[field])
    head = field.split(".")[0]
    if "." in field and head in cols:
        out = []
        for i, v in enumerate(ds[head]):
            for part in field.split(".")[1:]:
                if not isinstance(v, dict) or part not in v:
                    raise DataError(f"{where}: {row_word} {rows[i]}: field '{field}' is missing (no '{part}')")
                v = v[part]
            out.append(v)
        return out
    raise DataError(f"{where}: {row_word} {rows[0] if rows else 1}: field '{field}' is missing (columns: {', '.join(cols)})")


def _excerpt(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_prompt(p: Any, field: str, at: str) -> None:
    if p is None:
        raise DataError(f"{at}: field '{field}' is missing (null)")
    if not isinstance(p, str):
        raise DataError(f"{at}: field '{field}' must be a string, got {type(p).__name__}: {_excerpt(p)}")
    if not p.strip():
        raise DataError(f"{at}: field '{field}' is empty")


def _check_answer(a: Any, field: str, at: str) -> None:
    if a is None:
        raise DataError(f"{at}: field '{field}' is missing (null)")
    if isinstance(a, (str, list)) and not (a.strip() if isinstance(a, str) else a):
        raise DataError(f"{at}: field '{field}' is empty")


def _validate(prompts: list, answers: list, pf: str, af: str, where: str, word: str, rows: list[int]) -> None:
    for i, (p, a) in enumerate(zip(prompts, answers)):
        at = f"{where}: {word} {rows[i]}"
        _check_prompt(p, pf, at)
        _check_answer(a, af, at)


def _move_aside(ds, name: str):
    """Rename an existing column ``name`` to ``source_<name>`` (so the mapped field can take its name)."""
    if name in ds.column_names:
        new = f"source_{name}"
        if new in ds.column_names:
            ds = ds.remove_columns(new)
        ds = ds.rename_column(name, new)
    return ds


def map_fields(ds, prompt_field: str, answer_field: str, where: str = "dataset", row_word: str = "row", rows: list[int] | None = None):
    """Validate every row and return ``ds`` with ``prompt``/``answer`` columns (others kept)."""
    rows = rows if rows is not None else list(range(1, len(ds) + 1))
    if not prompt_field or not answer_field:
        raise DataError("data.prompt_field and data.answer_field must be non-empty")
    if prompt_field == answer_field:
        raise DataError(f"data.prompt_field and data.answer_field are both '{prompt_field}'")
    if prompt_field == "answer" or answer_field == "prompt":
        raise DataError("the question field cannot be 'answer' and the gold field cannot be 'prompt' (swapped?)")
    if len(ds) == 0:
        raise DataError(f"{where}: no rows")
    prompts = _field_values(ds, prompt_field, where, row_word, rows)
    answers = _field_values(ds, answer_field, where, row_word, rows)
    _validate(prompts, answers, prompt_field, answer_field, where, row_word, rows)
    for target, field, values in (("prompt", prompt_field, prompts), ("answer", answer_field, answers)):
        if field == target:
            continue
        ds = _move_aside(ds, target)
        ds = ds.rename_column(field, target) if field in ds.column_names else ds.add_column(target, values)
    return ds


def load_prompts(source: str, split: str = "train", subset: str = "", prompt_field: str = "prompt", answer_field: str = "answer"):
    """Load a source and map its fields: a ``datasets.Dataset`` with ``prompt``, ``answer`` and the rest.

    Code sources (MBPP, HumanEval: see :func:`gmpo.eval.code.is_code_source`) come with their tests as columns
    for the ``code_tests`` reward.
    """
    from gmpo.eval.code import code_dataset, is_code_source

    if is_code_source(source):
        return code_dataset(source, split)
    ds, rows, word, where = load_source(source, split, subset, prompt_field, answer_field)
    return map_fields(ds, prompt_field, answer_field, where, word, rows)


# ----------------------------------------------------------------------------------------------
# train / eval datasets from the config

def build_datasets(data_cfg, seed: int = 0):
    """(train, eval) ``datasets.Dataset`` pair from a :class:`gmpo.config.DataConfig`.

    Both have ``prompt`` and ``answer`` columns plus the source's other columns. Eval comes from
    ``eval_dataset`` (``'arithmetic'`` = the held-out split), else ``eval_split`` of ``dataset`` (for the
    arithmetic task: its held-out split; for a single local file only a slice such as
    ``eval_split='train[7000:]'`` makes sense), and is cut to its first ``eval_size`` rows (0 = all).
    ``seed`` is accepted for API stability; every source here is deterministic without it (the
    arithmetic splits are fixed by ``data_cfg.arithmetic.seed`` so they do not move between runs).
    """
    del seed
    c = data_cfg
    held = None
    if c.dataset == ARITHMETIC:
        train, held = arithmetic_splits(c.arithmetic)
    else:
        train = load_prompts(c.dataset, c.split, c.subset, c.prompt_field, c.answer_field)
    if c.eval_dataset == ARITHMETIC or (not c.eval_dataset and held is not None):
        eval_ds = held if held is not None else arithmetic_splits(c.arithmetic)[1]
    else:
        source = c.eval_dataset or c.dataset
        if not c.eval_dataset and Path(source).expanduser().is_file() and not _split_parts(c.eval_split)[1]:
            raise DataError(
                f"data.dataset={source} is a single file with no '{c.eval_split}' split: set data.eval_dataset "
                "to a held-out file, or slice the file, e.g. data.split='train[:-200]' data.eval_split='train[-200:]'"
            )
        subset = c.subset if source == c.dataset else ""
        eval_ds = load_prompts(source, c.eval_split, subset, c.prompt_field, c.answer_field)
    if c.eval_size < 0:
        raise DataError(f"data.eval_size must be >= 0, got {c.eval_size}")
    if c.eval_size and len(eval_ds) > c.eval_size:
        eval_ds = eval_ds.select(range(c.eval_size))
    return train, eval_ds
