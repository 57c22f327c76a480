"""Load benchmark of `gmpo serve` against a naive per-request HF ``generate`` server, in the same run.

    .venv/bin/python benchmarks/serve_load.py                       # SmolLM2-135M-Instruct, 1/4/16/64 clients
    .venv/bin/python benchmarks/serve_load.py --tiny --levels 1,4 --no-write    # a small check (~1 min)
    .venv/bin/python benchmarks/serve_load.py --tiny --soak 2000 --soak-clients 16   # the soak (RSS flat?)

Both servers run as subprocesses on 127.0.0.1 with the same model, the same torch thread count, the same
GSM8K test questions in the model's chat template, greedy decoding and the same ``max_tokens`` (64). The
naive server is what one writes first: a FastAPI route that calls ``model.generate`` for each request,
one at a time under a lock (running several ``generate`` calls at once on a 2-core CPU only makes them
fight for the cores). Clients are the real ``openai`` async client, ``c`` workers each sending its next
request when the previous one finished (closed loop), streaming with ``include_usage`` so the time to the
first content chunk is measured (both servers send the answer when its generation ends: see
gmpo/serve/scheduler.py). Levels alternate gmpo / naive so both see the same machine load.

Reported per server and level: requests/s, completion tokens/s, latency p50/p95/p99, TTFT p50, errors,
the server's peak resident memory (VmHWM). Appended to benchmarks/RESULTS.md with the load average.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


# ---------------------------------------------------------------------------------------------------
# the naive server (run as: serve_load.py --naive-server PORT MODEL THREADS)


def naive_server(port: int, model_path: str, threads: int) -> None:
    """A per-request HF ``generate`` server speaking enough of the chat API for the benchmark."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from gmpo.models import load_model

    torch.set_num_threads(threads)
    model, tok = load_model(model_path)
    model.eval()
    lock = threading.Lock()
    app = FastAPI()

    def generate(body: dict) -> tuple[str, int, int]:
        text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with lock, torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(body["max_tokens"]),
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids.shape[1]:]
        return tok.decode(new, skip_special_tokens=True), ids.shape[1], int(new.numel())

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict):  # a sync route: FastAPI runs it in its thread pool
        text, n_prompt, n_new = generate(body)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}
        base = {"id": "naive", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})

        def events():
            chunk = {**base, "object": "chat.completion.chunk"}
            yield f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': text}, 'finish_reason': None}]})}\n\n"
            yield f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    del Request
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path, timeout: float = 300.0) -> subprocess.Popen:
    """Start a server process and wait for its /health."""
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    env = {k: v for k, v in env.items() if v != ""}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not start in {timeout:.0f}s")


def batch_stats(port: int) -> tuple[float, float]:
    """(sum of rows, number of batches) from gmpo serve's ``gmpo:batch_size`` histogram."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {os.environ.get('GMPO_API_KEY', 'none')}"}).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("gmpo:batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gmpo:batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


# ---------------------------------------------------------------------------------------------------
# the clients


async def load_level(url: str, model: str, prompts: list[str], clients: int, total: int, max_tokens: int,
                     stream: bool = True, timeout: float = 600.0) -> dict:
    """``clients`` closed-loop workers send ``total`` requests; per-request latency, TTFT, tokens, errors."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key=os.environ.get("GMPO_API_KEY", "none"), max_retries=0,
                                timeout=timeout)
    counter = iter(range(total))
    records: list[dict] = []

    async def one(i: int) -> dict:
        msgs = [{"role": "user", "content": prompts[i % len(prompts)]}]
        t0 = time.perf_counter()
        try:
            if not stream:
                r = await client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens,
                                                         temperature=0)
                t = time.perf_counter() - t0
                return {"latency": t, "ttft": t, "tokens": r.usage.completion_tokens, "error": None}
            ttft, tokens = None, 0
            async for ch in await client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens,
                                                                 temperature=0, stream=True,
                                                                 stream_options={"include_usage": True}):
                if ttft is None and ch.choices and ch.choices[0].delta.content:
                    ttft = time.perf_counter() - t0
                if ch.usage is not None:
                    tokens = ch.usage.completion_tokens
            t = time.perf_counter() - t0
            return {"latency": t, "ttft": ttft if ttft is not None else t, "tokens": tokens, "error": None}
        except Exception as e:  # noqa: BLE001 - counted as an error of the level
            return {"latency": time.perf_counter() - t0, "ttft": None, "tokens": 0, "error": f"{type(e).__name__}: {e}"}

    async def worker():
        for i in counter:
            records.append(await one(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()
    return summarize(records, wall, clients)


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q)) if xs else float("nan")


def summarize(records: list[dict], wall: float, clients: int) -> dict:
    """Throughput and latency percentiles of one level."""
    ok = [r for r in records if r["error"] is None]
    lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok]
    errors = [r["error"] for r in records if r["error"]]
    return {"clients": clients, "requests": len(records), "ok": len(ok), "errors": len(errors),
            "first_error": errors[0] if errors else "", "wall_s": wall, "req_s": len(ok) / wall,
            "tok_s": sum(r["tokens"] for r in ok) / wall, "p50": _pct(lat, 50), "p95": _pct(lat, 95),
            "p99": _pct(lat, 99), "ttft_p50": _pct(ttft, 50), "ttft_p95": _pct(ttft, 95)}


# ---------------------------------------------------------------------------------------------------
# the run


def questions(k: int) -> list[str]:
    """The first ``k`` GSM8K test questions (a fixed arithmetic question per slot without the data)."""
    if DATA.is_file():
        with open(DATA) as f:
            return [json.loads(line)["question"] for _, line in zip(range(k), f)]
    return [f"What is {i} * {i + 7} + {3 * i}?" for i in range(k)]


def machine(threads: int) -> str:
    """One line: CPU, torch, threads, load average."""
    import torch

    try:
        from gmpo.perf import cpu_name

        cpu = cpu_name()
    except Exception:  # noqa: BLE001
        cpu = platform.processor() or "cpu"
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({threads} threads per server), "
            f"Python {platform.python_version()}")


def serve_cmd(model: str, port: int, threads: int, workdir: Path, args) -> list[str]:
    """The `gmpo serve` command line of the benchmark."""
    return [sys.executable, "-m", "gmpo.cli", "serve", "--model", f"bench={model}", "--port", str(port),
            "--threads", str(threads), "--log-db", str(workdir / "requests.db"), "--max-queue", "4096",
            "--max-batch-rows", str(args.max_batch_rows), "--batch-wait-ms", str(args.batch_wait_ms),
            "--scorer", "nonempty", "--scorer", "not_truncated"]


def soak(url: str, pid: int, prompts: list[str], args) -> dict:
    """``--soak`` requests from ``--soak-clients`` clients in slices; the server's RSS after each slice."""
    slices, done, samples, errors, first_error = 8, 0, [], 0, ""
    per = -(-args.soak // slices)
    t0 = time.perf_counter()
    while done < args.soak:
        n = min(per, args.soak - done)
        res = asyncio.run(load_level(url, "bench", prompts, args.soak_clients, n, args.max_tokens, stream=False))
        done += n
        errors += res["errors"]
        first_error = first_error or res["first_error"]
        samples.append((done, memory_kb(pid)["VmRSS"] / 1024))
        print(f"  soak {done}/{args.soak}: {res['req_s']:.1f} req/s, errors {errors}, RSS {samples[-1][1]:.0f} MB",
              flush=True)
    return {"requests": done, "errors": errors, "first_error": first_error, "wall_s": time.perf_counter() - t0,
            "rss_mb": samples, "hwm_mb": memory_kb(pid)["VmHWM"] / 1024}


def table(rows: list[dict]) -> list[str]:
    """Markdown rows of the level results, with the gmpo/naive throughput ratio."""
    out = ["| server | clients | requests | req/s | tokens/s | p50 s | p95 s | p99 s | TTFT p50 s | errors | "
           "peak RSS MB | rows per batch | gmpo / naive req/s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    naive = {r["clients"]: r for r in rows if r["server"] == "naive"}
    for r in rows:
        ratio = ""
        if r["server"] == "gmpo serve" and r["clients"] in naive and naive[r["clients"]]["req_s"] > 0:
            ratio = f"**{r['req_s'] / naive[r['clients']]['req_s']:.1f}x**"
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
        out.append(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.1f} | "
                   f"{r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['ttft_p50']:.2f} | {r['errors']} | "
                   f"{r['hwm_mb']:.0f} | {batch} | {ratio} |")
    return out


def main() -> int:
    """Run the levels (or the soak), print the table, append to RESULTS.md."""
    if len(sys.argv) == 5 and sys.argv[1] == "--naive-server":
        naive_server(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model of both servers (default %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="the tiny random-init test model instead (quick checks)")
    ap.add_argument("--levels", default="1,4,16,64", help="concurrent clients per level (default %(default)s)")
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests per level = clients x this")
    ap.add_argument("--min-requests", type=int, default=8, help="at least this many requests per level")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each server (default %(default)s)")
    ap.add_argument("--max-batch-rows", type=int, default=64, help="gmpo serve --max-batch-rows")
    ap.add_argument("--batch-wait-ms", type=float, default=20.0, help="gmpo serve --batch-wait-ms")
    ap.add_argument("--warmup", type=int, default=2, help="requests to each server before measuring")
    ap.add_argument("--no-naive", action="store_true", help="only gmpo serve")
    ap.add_argument("--soak", type=int, default=0, help="soak: this many requests against gmpo serve instead")
    ap.add_argument("--soak-clients", type=int, default=16, help="concurrent clients of the soak")
    ap.add_argument("--deadline", default="", help="HH:MM (UTC): start no new level after this time")
    ap.add_argument("--no-write", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()
    args.deadline_ts = 0.0
    if args.deadline:
        now = dt.datetime.now(dt.timezone.utc)
        hh, mm = (int(x) for x in args.deadline.split(":"))
        args.deadline_ts = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    levels = [int(x) for x in args.levels.split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    model = args.model
    if args.tiny:
        from gmpo.testing import save_tiny

        model = str(save_tiny(work / "tiny"))
    prompts = questions(64)
    load_before = os.getloadavg()
    procs, rows, interrupted = {}, [], ""
    try:
        port = free_port()
        procs["gmpo serve"] = (start(serve_cmd(model, port, args.threads, work, args), port, work / "serve.log"), port)
        if not args.no_naive and not args.soak:
            nport = free_port()
            procs["naive"] = (start([sys.executable, __file__, "--naive-server", str(nport), model, str(args.threads)],
                                    nport, work / "naive.log"), nport)
        for name, (proc, p) in procs.items():  # warm-up: first-call costs out of the measurement
            asyncio.run(load_level(f"http://127.0.0.1:{p}/v1", "bench", prompts, 1, args.warmup, args.max_tokens))
        if args.soak:
            proc, p = procs["gmpo serve"]
            res = soak(f"http://127.0.0.1:{p}/v1", proc.pid, prompts, args)
            return report_soak(res, model, args, load_before)
        for c in levels:
            if args.deadline and time.time() > args.deadline_ts:
                interrupted = f"stopped before the {c}-client level: --deadline {args.deadline} passed"
                break
            total = max(c * args.requests_per_client, args.min_requests)
            for name, (proc, p) in procs.items():
                before = batch_stats(p) if name == "gmpo serve" else None
                res = asyncio.run(load_level(f"http://127.0.0.1:{p}/v1", "bench", prompts, c, total, args.max_tokens))
                res.update(server=name, hwm_mb=memory_kb(proc.pid)["VmHWM"] / 1024)
                if before is not None:
                    after = batch_stats(p)
                    res["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                rows.append(res)
                print(f"{name:10s} c={c:3d}: {res['req_s']:.2f} req/s, {res['tok_s']:.1f} tok/s, p50 {res['p50']:.2f}s, "
                      f"p99 {res['p99']:.2f}s, errors {res['errors']} {res['first_error'][:80]}"
                      + (f", {res['mean_batch']:.1f} rows per batch" if "mean_batch" in res else ""), flush=True)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
    lines = table(rows) + ([f"", f"({interrupted})"] if interrupted else [])
    print("\n".join(lines))
    if not args.no_write:
        write([f"## gmpo serve vs a naive per-request HF generate server ({dt.date.today().isoformat()})", "",
               f"Command: `.venv/bin/python benchmarks/serve_load.py {' '.join(sys.argv[1:])}`".rstrip() + "",
               f"- model: {'tiny random-init test model' if args.tiny else model}; GSM8K test questions in the chat "
               f"template, greedy, max_tokens {args.max_tokens}, streamed (include_usage); closed-loop openai "
               f"AsyncOpenAI clients; requests per level = max(clients x {args.requests_per_client}, "
               f"{args.min_requests}); levels alternate gmpo / naive",
               f"- machine: {machine(args.threads)}; load average {load_before[0]:.2f} at start, "
               f"{os.getloadavg()[0]:.2f} at end", "", *lines, ""])
    return 0


def report_soak(res: dict, model: str, args, load_before) -> int:
    """Print and append the soak result."""
    rss = res["rss_mb"]
    warm = rss[1][1] if len(rss) > 1 else rss[0][1]
    line = (f"soak: {res['requests']} requests from {args.soak_clients} clients in {res['wall_s']:.0f}s, "
            f"{res['errors']} errors; RSS after each slice (requests: MB) "
            + ", ".join(f"{n}: {m:.0f}" for n, m in rss) + f"; after warm-up {warm:.0f} -> {rss[-1][1]:.0f} MB "
            f"({rss[-1][1] - warm:+.0f} MB); peak {res['hwm_mb']:.0f} MB")
    print(line + (f"; first error: {res['first_error']}" if res["errors"] else ""))
    if not args.no_write:
        write([f"## gmpo serve soak ({dt.date.today().isoformat()})", "",
               f"Command: `.venv/bin/python benchmarks/serve_load.py {' '.join(sys.argv[1:])}`",
               f"- model: {'tiny random-init test model' if args.tiny else model}, max_tokens {args.max_tokens}, "
               f"non-streamed; machine: {machine(args.threads)}; load average {load_before[0]:.2f} at start, "
               f"{os.getloadavg()[0]:.2f} at end", "", f"- {line}", ""])
    return 0 if res["errors"] == 0 else 1


def write(lines: list[str]) -> None:
    """Append a section to benchmarks/RESULTS.md."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    with RESULTS.open("a") as f:
        f.write(sep + "\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
