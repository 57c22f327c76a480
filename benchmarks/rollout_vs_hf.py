"""Rollout speed: gmpo's KV-cache engine vs Hugging Face ``generate`` at equal batch.

    .venv/bin/python benchmarks/rollout_vs_hf.py            # ~10 min on a 2-core CPU
    .venv/bin/python benchmarks/rollout_vs_hf.py --quick    # smaller workloads, a smoke run

Workloads (GSM8K test questions in the model's chat template, from ../shared/data):
  sample: 8 prompts x 8 samples, 32 new tokens, temperature 1.0 (the reference RL step's rollout)
  greedy: 64 prompts x 1 sample, 128 new tokens, greedy
each in float32 and under bf16 autocast. Both sides decode all rows as one batch; HF ``generate`` gets
the prompts already expanded to their rows (it has no prefix sharing) and its fastest plain call (no
scores kept). Throughput counts real completion tokens (up to and including EOS). Runs alternate
engine / HF so both see the same machine load, each after waiting for other processes to quiet down
(``--max-busy``); the median of ``--reps`` runs is reported.
Appends a dated section to benchmarks/RESULTS.md (created if absent).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def load(name: str):
    """The real model via gmpo.models, or (if that fails) a random-init model of SmolLM2-135M's shape."""
    try:
        from gmpo.models import load_model

        model, tok = load_model(name)
        return model, tok, name
    except Exception as err:  # offline without the packaged model: same shape, random weights
        print(f"load_model({name!r}) failed ({err}); using a random-init SmolLM2-135M-shaped Llama", file=sys.stderr)
        from transformers import LlamaConfig, LlamaForCausalLM

        from gmpo.testing import tiny_tokenizer

        tok = tiny_tokenizer()
        cfg = LlamaConfig(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True, rms_norm_eps=1e-5,
            rope_theta=100000.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg), tok, "random-init SmolLM2-135M shape"


def gsm8k_prompts(tok, k: int) -> list[list[int]]:
    """The first ``k`` GSM8K test questions rendered with the chat template and tokenised."""
    rows = [json.loads(line) for line in DATA.open()][:k]
    out = []
    for r in rows:
        msgs = [{"role": "user", "content": r["question"]}]
        if tok.chat_template:
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        else:
            text = r["question"]
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def hf_generate(model, tok, prompts, params, bf16: bool):
    """Plain ``model.generate`` over the expanded rows; returns (seconds, real new tokens, (N, T) ids)."""
    from transformers import GenerationConfig

    from gmpo.rollout.engine import eos_token_ids, pad_token_id

    pad, eos = pad_token_id(tok), eos_token_ids(model, tok)
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts]).repeat_interleave(params.n, 0)
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts]).repeat_interleave(params.n, 0)
    greedy = params.temperature == 0
    cfg = GenerationConfig(
        max_new_tokens=params.max_new_tokens, do_sample=not greedy, pad_token_id=pad, eos_token_id=eos,
        **({} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}),
    )
    torch.manual_seed(params.seed or 0)
    model.eval()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    t0 = time.perf_counter()
    # generate runs under its own no_grad; no inference_mode here, which would switch off autocast's
    # weight-cast cache and make HF recast every weight at every step (HF at its fastest)
    with ctx:
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
    seconds = time.perf_counter() - t0
    gen = out[:, L:]
    is_eos = torch.isin(gen, torch.tensor(eos))
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((len(gen),), gen.shape[1]))
    return seconds, int(first.sum()), gen


def engine_generate(engine, prompts, params):
    """One engine call; returns (seconds, real new tokens, rollout)."""
    t0 = time.perf_counter()
    r = engine.generate(prompts, params)
    return time.perf_counter() - t0, int(r.lengths.sum()), r


def busy_cores(seconds: float = 1.0) -> float:
    """CPU cores busy (all processes) over ``seconds``, from /proc/stat; call it while this process idles."""
    def read():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return float("nan")
    return (1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Sleep until other processes use < ``max_busy`` cores (or ``timeout`` s pass); return the last reading.

    On a shared machine an oversubscribed 2-thread OpenMP matmul slows down several-fold, which would
    drown the comparison; waiting for a quiet moment before each measured run keeps it fair.
    """
    deadline = time.time() + timeout
    busy = busy_cores()
    while busy > max_busy and time.time() < deadline:
        time.sleep(4)
        busy = busy_cores()
    return busy


def machine() -> str:
    import transformers

    from gmpo.perf import cpu_name

    cpu = cpu_name()
    return (
        f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )


def main(argv=None) -> int:
    """Run the workloads, print a table, append it to benchmarks/RESULTS.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model name or path for gmpo.models.load_model")
    ap.add_argument("--reps", type=int, default=2, help="measured runs per (workload, dtype, backend)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--quick", action="store_true", help="small workloads (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--max-busy", type=float, default=0.5, help="wait until other processes use fewer cores than this")
    ap.add_argument("--max-wait", type=float, default=120.0, help="longest wait (s) for that before each measured run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from gmpo.rollout import SamplingParams
    from gmpo.rollout.engine import KVCacheEngine

    model, tok, model_name = load(args.model)
    # (label, prompts, params); --quick shrinks every dimension (a smoke run, not a measurement)
    sample_p, sample_n, sample_t, greedy_p, greedy_t = (4, 4, 8, 16, 32) if args.quick else (8, 8, 32, 64, 128)
    workloads = [
        (f"sample {sample_p}x{sample_n}, {sample_t} new, T=1.0", sample_p,
         SamplingParams(n=sample_n, max_new_tokens=sample_t, temperature=1.0, seed=0)),
        (f"greedy {greedy_p}x1, {greedy_t} new", greedy_p, SamplingParams(n=1, max_new_tokens=greedy_t, temperature=0.0)),
    ]
    all_prompts = gsm8k_prompts(tok, 64)
    load_start = os.getloadavg()[0]
    rows = []
    for label, P, params in workloads:
        prompts = all_prompts[:P]
        for bf16 in (False, True):
            engine = KVCacheEngine(model, tok, bf16=bf16, decode_batch_size=256)
            engine.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=4, seed=0))  # warm-up
            hf_generate(model, tok, prompts[:2], SamplingParams(n=2, max_new_tokens=4, seed=0), bf16)
            e_rates, h_rates, e_secs, h_secs, same, busy = [], [], [], [], None, []
            for _ in range(args.reps):
                busy.append(wait_for_quiet(args.max_busy, args.max_wait))
                s, n_tok, r = engine_generate(engine, prompts, params)
                e_rates.append(n_tok / s), e_secs.append(s)
                busy.append(wait_for_quiet(args.max_busy, args.max_wait))
                s, n_tok, gen = hf_generate(model, tok, prompts, params, bf16)
                h_rates.append(n_tok / s), h_secs.append(s)
                if params.temperature == 0:  # greedy: do the two agree token for token?
                    w = min(gen.shape[1], r.completion_ids.shape[1])
                    m = r.completion_mask[:, :w].bool()
                    same = int(((gen[:, :w] == r.completion_ids[:, :w]) | ~m).all(-1).sum())
            e, h = statistics.median(e_rates), statistics.median(h_rates)
            row = {
                "workload": label, "dtype": "bf16 autocast" if bf16 else "fp32", "rows": P * params.n,
                "engine_tok_s": e, "hf_tok_s": h, "speedup": e / h,
                "engine_s": statistics.median(e_secs), "hf_s": statistics.median(h_secs),
                "greedy_rows_identical": same, "others_busy_cores": max(busy),
            }
            rows.append(row)
            rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(json.dumps({**{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, "peak_rss_gb": round(rss_gb, 2)}), flush=True)
    load_end = os.getloadavg()[0]

    command = " ".join([".venv/bin/python benchmarks/rollout_vs_hf.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"## Rollout: KV-cache engine vs HF generate ({dt.datetime.now().strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- command: `{command}`",
        f"- model: {model_name}; prompts: GSM8K test questions in the chat template",
        f"- machine: {machine()}; load average {load_start:.1f} at start, {load_end:.1f} at end",
        "",
        "| workload | dtype | rows | engine tok/s | HF generate tok/s | speedup | engine s | HF s | greedy rows identical | max cores busy before a run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        same = "-" if r["greedy_rows_identical"] is None else f"{r['greedy_rows_identical']}/{r['rows']}"
        lines.append(
            f"| {r['workload']} | {r['dtype']} | {r['rows']} | {r['engine_tok_s']:.0f} | {r['hf_tok_s']:.0f} | "
            f"{r['speedup']:.2f}x | {r['engine_s']:.1f} | {r['hf_s']:.1f} | {same} | {r['others_busy_cores']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        new = not RESULTS.exists()
        with RESULTS.open("a") as f:
            if new:
                f.write("# Benchmark results\n\nAppend-only log of benchmark runs (newest last).\n\n")
            elif not RESULTS.read_text().endswith("\n\n"):
                f.write("\n")  # a blank line before the new section
            f.write(text + "\n")
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
