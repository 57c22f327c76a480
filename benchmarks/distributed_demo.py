"""The demo recipe on several processes vs one (issue 14): equal learning, whatever the number of ranks.

One command (SmolLM2-135M-Instruct, configs/arithmetic_gmpo.yaml, 20 steps; ~20-40 min on a 2-core CPU):

    .venv/bin/python benchmarks/distributed_demo.py --append-results

Runs, one after the other (each a real `gmpo train`, 1 thread per process):
1. ``one``: one process;
2. ``ddp``: ``gmpo train --nproc 2`` (torchrun, gloo), replicated weights, gradients summed over ranks;
3. ``fsdp2``: ``gmpo train --nproc 2 ... train.parallel=fsdp2`` (weights, gradients and AdamW state sharded).
The same global batch per step (8 prompts x 8 completions; each rank samples 4 prompts' groups with its own
seed, so the samples differ from the one-process run's: equal learning, not equal numbers, is the check).
Reported per run: wall time, held-out accuracy before -> after (the recipe's 100 held-out problems), reward
of the first and last 5 steps. Speed on 2 shared cores is not the point (2 ranks of 1 thread each vs 1
process of 1 thread, plus gloo on one machine). A rerun skips finished runs (delete --out to redo).
``--tiny`` checks the script on the random-init tiny model in a minute (results to the out dir only).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8", "train.mini_batch_size=8",
        "train.micro_batch_size=4", "data.eval_size=8", "train.bf16=false", "train.steps=3"]
MODES = {"one": [], "ddp": ["--nproc", "2"], "fsdp2": ["--nproc", "2"]}


def run(mode: str, out: Path, extra: list[str]) -> dict:
    """`gmpo train` of the recipe in `mode`; its wall time and metrics summary (cached in out/<mode>.json)."""
    from gmpo.runs.files import METRICS, read_metrics

    done = out / f"{mode}.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir = out / mode
    args = [sys.executable, "-m", "gmpo", "train", *MODES[mode], str(ROOT / "configs" / "arithmetic_gmpo.yaml"),
            f"train.output_dir={run_dir}", "train.threads=1", "train.device=cpu", "log.progress=false",
            *(["train.parallel=fsdp2"] if mode == "fsdp2" else []), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    load0 = os.getloadavg()[0]
    print("$ " + " ".join(args[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    ms = read_metrics(run_dir / METRICS)
    acc = [(m["step"], m["eval/accuracy"]) for m in ms if "eval/accuracy" in m]
    rewards = [m["reward/mean"] for m in ms if "reward/mean" in m]
    res = {"mode": mode, "wall_s": wall, "load_start": load0, "load_end": os.getloadavg()[0],
           "acc_before": next((a for s, a in acc if s == 0), None), "acc_after": acc[-1][1] if acc else None,
           "reward_first5": statistics.mean(rewards[:5]), "reward_last5": statistics.mean(rewards[-5:]),
           "steps": len(rewards), "step_s_median": statistics.median(m["perf/step_s"] for m in ms if "perf/step_s" in m)}
    done.write_text(json.dumps(res, indent=2))
    print(json.dumps(res), flush=True)
    return res


def table(results: list[dict]) -> str:
    """The markdown table of the runs."""
    one = results[0]["wall_s"]
    rows = [f"| {r['mode']} | {r['wall_s']:.0f} s ({r['wall_s'] / one:.2f}x) | {r['step_s_median']:.1f} s | "
            f"{r['acc_before']:.2f} -> {r['acc_after']:.2f} | {r['reward_first5']:.3f} -> {r['reward_last5']:.3f} | "
            f"{r['load_start']:.1f} / {r['load_end']:.1f} |" for r in results]
    return ("| run | wall (vs one) | median step | held-out accuracy before -> after | reward first 5 -> last 5 steps "
            "| load average start / end |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    """Run the three modes, print the table, optionally append it to benchmarks/RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="working directory (default runs/distributed_demo[_tiny])")
    p.add_argument("--modes", default="one,ddp,fsdp2", help="comma-separated subset of one, ddp, fsdp2 (one first)")
    p.add_argument("--tiny", action="store_true", help="the random-init tiny model, 3 steps (a check of the script)")
    p.add_argument("--append-results", action="store_true", help="append a section to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    out = Path(a.out or ("runs/distributed_demo_tiny" if a.tiny else "runs/distributed_demo")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = []
    if a.tiny:
        from gmpo.testing import save_tiny

        model = out / "tiny_model"
        if not model.is_dir():
            save_tiny(model)
        extra = [f"model.name_or_path={model}", *TINY]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"--modes: unknown {unknown}; choose from {sorted(MODES)}")
    results = [run(m, out, extra) for m in modes]
    import torch

    from gmpo.perf import cpu_name

    text = (f"\n## Demo recipe: 2 ranks (ddp, fsdp2) vs 1 process ({dt.datetime.utcnow():%Y-%m-%d %H:%M} UTC)\n\n"
            f"Command: `.venv/bin/python benchmarks/distributed_demo.py {' '.join(argv if argv is not None else sys.argv[1:])}`  \n"
            f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo; 1 thread per process; "
            f"configs/arithmetic_gmpo.yaml ({'tiny model' if a.tiny else 'SmolLM2-135M-Instruct'}), same global batch per "
            f"step, each rank sampling its share with its own seed.\n\n{table(results)}\n")
    print(text)
    if a.append_results and not a.tiny:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
