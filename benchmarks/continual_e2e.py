"""End-to-end acceptance of safe continual learning (issue 11): two cycles of `gmpo continual` on two batches of
arithmetic data, the second with a wrong-answer column. Expected: batch 1 promoted, batch 2 rejected.

    python benchmarks/continual_e2e.py --out runs/continual_e2e            # SmolLM2-135M-Instruct (CPU: ~30 min)
    python benchmarks/continual_e2e.py --out /tmp/e2e --tiny               # the tiny random model: a smoke check

Batches come from the built-in arithmetic task's training split (disjoint from the gate's held-out split by
construction): batch_01 has the right answers; batch_02 has next rows with every answer off by +1 (a
systematic, learnable corruption: the model sometimes says n+1, so training on it moves the model away from
correct answers, and the gate's paired test catches it). Writes <out>/e2e_summary.json and prints the cycle
table, the gate reports and the times. Exit status 1 when the outcome differs from the expected one (real
model only).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_batches(incoming: Path, rows: int, offset: int) -> None:
    """batch_01.jsonl (right answers) and batch_02.jsonl (answers + offset), both from the training split."""
    from gmpo.config import ArithmeticConfig
    from gmpo.data.arithmetic import arithmetic_splits

    train, _ = arithmetic_splits(ArithmeticConfig())  # the defaults = the gate's arithmetic keys
    items = train.to_list()[: 2 * rows]
    incoming.mkdir(parents=True, exist_ok=True)
    good = [{"prompt": r["prompt"], "answer": r["answer"]} for r in items[:rows]]
    bad = [{"prompt": r["prompt"], "answer": str(int(r["answer"]) + offset)} for r in items[rows:]]
    for name, batch in [("batch_01.jsonl", good), ("batch_02.jsonl", bad)]:
        (incoming / name).write_text("".join(json.dumps(r) + "\n" for r in batch))


def make_recipe(out: Path, tiny: bool, steps: int, threads: int = 0) -> Path:
    """The repository's continual recipe with this run's work_dir (and tiny-model sizes with --tiny)."""
    recipe = yaml.safe_load((ROOT / "configs" / "continual_arithmetic.yaml").read_text())
    gate = yaml.safe_load((ROOT / "configs" / "gate_arithmetic.yaml").read_text())
    recipe["work_dir"] = str(out / "work")
    recipe["train"]["recipe"] = str(ROOT / "configs" / "arithmetic_gmpo.yaml")
    recipe["train"]["overrides"]["train.steps"] = steps
    if threads:
        recipe["train"]["overrides"]["train.threads"] = threads
        recipe["probe"]["overrides"]["train.threads"] = threads
    if tiny:
        from gmpo.testing import save_tiny

        recipe["base_model"] = str(save_tiny(out / "tiny_base"))
        recipe["train"]["overrides"].update({"rollout.max_new_tokens": 8, "train.bf16": "false"})
        gate["sets"]["arithmetic_heldout"]["size"] = 20
        gate["decoding"]["max_new_tokens"] = 8
        gate["floors"] = {}
    (out / "gate.yaml").write_text(yaml.safe_dump(gate, sort_keys=False))
    recipe["gate"] = str(out / "gate.yaml")
    path = out / "continual.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    """Generate the batches, run `gmpo continual`, report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (registry, batches, runs, summary)")
    p.add_argument("--rows", type=int, default=160, help="rows per batch (160 = 20 steps x 8 prompts)")
    p.add_argument("--steps", type=int, default=20, help="training steps per cycle")
    p.add_argument("--offset", type=int, default=1, help="batch 2's answers are the right ones + offset")
    p.add_argument("--tiny", action="store_true", help="the tiny random model (a fast smoke check of the pipeline)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; 1 is much faster on an oversubscribed shared CPU)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if (out / "registry.db").exists():
        print(f"{out}/registry.db exists: re-running resumes the recorded cycles (delete {out} to start afresh)")
    out.mkdir(parents=True, exist_ok=True)
    make_batches(out / "incoming", args.rows, args.offset)
    recipe = make_recipe(out, args.tiny, args.steps, args.threads)
    load_before = os.getloadavg()
    t0 = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    cmd = [sys.executable, "-m", "gmpo.cli", "continual", str(recipe), "--incoming", str(out / "incoming"),
           "--registry", str(out / "registry.db")]
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    wall = time.time() - t0

    from gmpo.runs.continual import ContinualLoop, load_continual
    from gmpo.runs.model_registry import ModelRegistry

    reg = ModelRegistry(out / "registry.db")
    cycles = ContinualLoop(load_continual(recipe), reg).cycles()
    for c in cycles:
        md = c["details"].get("report_md")
        if md:
            print(f"\n---- gate report for {c['batch']} ----\n{Path(md).read_text()}")
    states = [c["state"] for c in cycles]
    summary = {"rc": rc, "wall_s": wall, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               "model": "tiny" if args.tiny else "smollm2-135m-instruct", "steps": args.steps, "rows": args.rows,
               "states": states, "aliases": reg.aliases("arith"), "history": reg.history("arith"),
               "cycles": [{k: c[k] for k in ("batch", "state", "decision", "base_version", "candidate", "details")}
                          for c in cycles]}
    (out / "e2e_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    reg.close()
    print(f"\nstates {states}, aliases {summary['aliases']}, wall {wall:.0f} s, load average before "
          f"{load_before[0]:.1f} after {summary['loadavg_after'][0]:.1f}; summary: {out / 'e2e_summary.json'}")
    if rc != 0:
        return rc
    return 0 if args.tiny or states == ["promoted", "rejected"] else 1


if __name__ == "__main__":
    sys.exit(main())
