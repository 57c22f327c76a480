"""gmpo serve as a process: SIGTERM with requests in flight (all complete, the log is consistent), the
registry alias followed (a rollback is served without a failed request), refusing unsafe binds."""
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch

from gmpo.cli import main
from gmpo.models import load_model
from gmpo.rollout import SamplingParams, make_engine
from gmpo.serve.config import ModelSpec, ServeConfig
from gmpo.serve.server import ServerThread
from gmpo.testing import save_tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_requests_in_flight_and_leaves_the_log_consistent(tiny_model_dir, tmp_path):
    port, db = _free_port(), tmp_path / "requests.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gmpo.cli", "serve", "--model", f"tiny={tiny_model_dir}",
                             "--port", str(port), "--log-db", str(db), "--threads", "1", "--batch-wait-ms", "0",
                             "--max-batch-rows", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
        # 8 requests, 4 rows a batch: two batches, so requests are both decoding and queued at SIGTERM
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client.completions.create, model="tiny", prompt=f"count {i}", max_tokens=100,
                                   temperature=0) for i in range(8)]
            while httpx.get(base + "/health").json()["running"] == 0:
                time.sleep(0.01)
            health = httpx.get(base + "/health").json()
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]  # raises if any request failed
        assert health["running"] + health["waiting"] >= 1
        assert len(results) == 8 and all(r.choices[0].finish_reason in ("stop", "length") for r in results)
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read()
        assert "8 log rows written" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT id, status, completion_tokens FROM requests").fetchall()
    assert sorted(r[0] for r in rows) == sorted(r.id for r in results)
    assert all(status == 200 for _, status, _ in rows)
    assert {r.id: r.usage.completion_tokens for r in results} == {i: c for i, _, c in rows}


def test_refuses_a_public_bind_without_a_key_and_bad_options(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--model", "x=/nowhere"]) == 2
    assert "refusing to bind 0.0.0.0: a non-loopback address needs --api-key" in capsys.readouterr().err
    assert main(["serve", "--model", "a=/x", "--model", "a=/y"]) == 2
    assert "model names must be unique" in capsys.readouterr().err
    assert main(["serve", "--model", "a=/x", "--fallback-model", "b", "--fallback-threshold", "0.5"]) == 2
    assert "is not a served model" in capsys.readouterr().err


def _greedy(path, prompt):
    model, tok = load_model(str(path))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    return make_engine("engine", model, tok).generate([ids], SamplingParams(max_new_tokens=12, temperature=0)).texts[0]


def test_rollback_is_served_without_a_failed_request(tmp_path):
    registry = pytest.importorskip("gmpo.runs.model_registry")
    promotion = pytest.importorskip("gmpo.runs.promotion")
    v1_dir, v2_dir = save_tiny(tmp_path / "v1", seed=0), save_tiny(tmp_path / "v2", seed=1)
    prompt = "12 + 30 ="
    want = {1: _greedy(v1_dir, prompt), 2: _greedy(v2_dir, prompt)}
    assert want[1] != want[2]
    reg = registry.ModelRegistry(tmp_path / "registry.db")
    reg.add(v1_dir, "policy")
    reg.add(v2_dir, "policy")
    reg.move_aliases("policy", {"production": 2, "previous": 1}, "promote 2 (test)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = ServeConfig(models=[ModelSpec("prod", "registry:policy@production")], registry=str(tmp_path / "registry.db"),
                      reload_interval_s=0.1, log_db=str(tmp_path / "requests.db"))
    answers, errors, stop = [], [], threading.Event()
    try:
        with ServerThread(cfg) as server:
            client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)

            def loop():
                while not stop.is_set():
                    try:
                        r = client.completions.create(model="prod", prompt=prompt, max_tokens=12, temperature=0)
                        answers.append((time.monotonic(), r.choices[0].text))
                    except Exception as e:  # noqa: BLE001 - collected: the test asserts there are none
                        errors.append(e)

            workers = [threading.Thread(target=loop) for _ in range(3)]
            for w in workers:
                w.start()
            time.sleep(0.5)
            t_rollback = time.monotonic()
            assert promotion.rollback(reg, "policy") == (2, 1)
            deadline = time.monotonic() + 30
            while not any(t > t_rollback and a == want[1] for t, a in answers) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            stop.set()
            for w in workers:
                w.join()
            served_v1 = [t for t, a in answers if a == want[1]]
    finally:
        torch.set_num_threads(threads)
    assert not errors, errors[:3]
    assert {a for _, a in answers} == {want[1], want[2]}  # only ever one of the two versions
    assert all(a == want[2] for t, a in answers if t < t_rollback)  # production was v2 before
    switch = min(served_v1)
    assert all(a == want[1] for t, a in answers if t > switch + 0.5)  # then v1 only, no flapping back
    with sqlite3.connect(tmp_path / "requests.db") as con:
        kinds = [k for (k,) in con.execute("SELECT kind FROM events")]
        versions = {v for (v,) in con.execute("SELECT model_version FROM requests")}
    assert kinds == ["model_reload"]
    assert versions == {"registry:policy@production v2", "registry:policy@production v1"}


def test_several_models_by_path_each_loaded_once(tmp_path):
    a, b = save_tiny(tmp_path / "a", seed=0), save_tiny(tmp_path / "b", seed=1)
    cfg = ServeConfig(models=[ModelSpec.parse(f"alpha={a}"), ModelSpec.parse(str(b))], log_db=str(tmp_path / "r.db"))
    assert [m.name for m in cfg.models] == ["alpha", "b"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ServerThread(cfg) as server:
            client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["alpha", "b"]
            pool = server.service.pool
            loaded = {name: id(pool.get(name).model) for name in ("alpha", "b")}
            texts = {name: client.completions.create(model=name, prompt="12 + 30 =", max_tokens=6, temperature=0)
                     .choices[0].text for name in ("alpha", "b", "alpha")}
            assert {name: id(pool.get(name).model) for name in ("alpha", "b")} == loaded  # no reload per request
            assert texts["alpha"] == _greedy(a, "12 + 30 =")[:6] and texts["b"] == _greedy(b, "12 + 30 =")[:6]
    finally:
        torch.set_num_threads(threads)
