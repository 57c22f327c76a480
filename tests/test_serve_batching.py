"""gmpo serve batching: greedy answers are the same alone and in a batch of 32 (fp32); requests that arrive
while a batch decodes join the next batch (measured); a full queue answers 429; batches group only
requests that can share one engine call. A real server on 127.0.0.1, the real openai client."""
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from gmpo.rollout import SamplingParams
from gmpo.serve.config import ServeConfig
from gmpo.serve.server import ServerThread
from gmpo.serve.testing import constant_model, tiny_pool
from gmpo.testing import tiny_model

PROMPTS = [f"Question {i}: what is {i * 7} + {i * i}?" + " Think." * (i % 5) for i in range(32)]


@pytest.fixture
def make_server(tok, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = []

    def make(**kw):
        cfg = ServeConfig(log_db=str(tmp_path / "requests.db"), **kw)
        pool = tiny_pool(cfg, {"tiny": (tiny_model(tok, seed=0), tok), "loop": (constant_model(tok, "a"), tok)})
        s = ServerThread(cfg, pool).start()
        started.append(s)
        return s, openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)

    yield make
    for s in started:
        s.stop()
    torch.set_num_threads(threads)


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_greedy_answers_are_identical_alone_and_in_a_batch_of_32(make_server):
    server, client = make_server(max_batch_rows=64, batch_wait_s=0.0)
    sched = server.service.scheduler

    def ask(p):
        return client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0).choices[0].text

    # alone: each prompt in its own engine call (four of them also through the server, one request at a time)
    served = server.service.pool.get("tiny")
    params = SamplingParams(max_new_tokens=16, temperature=0)
    alone = [served.engine.generate([served.tokenizer(p, add_special_tokens=False)["input_ids"]], params).texts[0]
             for p in PROMPTS]
    for i in (0, 9, 18, 27):
        assert ask(PROMPTS[i]) == alone[i]
        assert sched.batches[-1].rows == 1
    sched.hold()
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(ask, p) for p in PROMPTS]
        _wait(lambda: sum(sched.waiting().values()) == 32)
        sched.release()
        batched = [f.result() for f in futures]
    last = sched.batches[-1]
    assert (last.jobs, last.rows) == (32, 32)  # one engine call for all 32
    assert batched == alone
    assert len(set(alone)) > 1  # the prompts really give different answers


def test_requests_arriving_during_a_batch_join_the_next_batch(make_server):
    server, client = make_server(batch_wait_s=0.0)
    sched = server.service.scheduler

    def ask(max_tokens):
        t = time.perf_counter()
        r = client.completions.create(model="loop", prompt="go", max_tokens=max_tokens, temperature=0)
        return r, t, time.perf_counter()

    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(ask, 250)  # a long batch: the constant model never stops early
        _wait(lambda: sched.running.get("loop", 0) == 1)
        time.sleep(0.05)
        late = [pool.submit(ask, 250) for _ in range(2)]
        (r0, _, _), *rest = [first.result()] + [f.result() for f in late]
    b1, b2 = list(sched.batches)[-2:]
    assert (b1.jobs, b2.jobs) == (1, 2)  # the two late requests did not enter the running batch: both the next one
    assert b2.start >= b1.end
    assert r0.usage.completion_tokens == 250 and all(r.usage.completion_tokens == 250 for r, _, _ in rest)
    # their queue time is the rest of the running batch (what "join the next batch" costs)
    server.service.reqlog.flush()
    import sqlite3

    with sqlite3.connect(server.cfg.log_db) as db:
        queue = [q for (q,) in db.execute("SELECT queue_s FROM requests ORDER BY ts")]
    arrivals = [t for _, t, _ in rest]
    waited = [b1.end - t for t in arrivals]
    print(f"\nnext-batch join: first batch {b1.end - b1.start:.3f}s; late requests queued {queue[-2:]} s "
          f"(rest of the running batch: {[round(w, 3) for w in waited]} s); second batch of {b2.rows} rows")
    assert all(q > 0.5 * (b1.end - b1.start) * 0.5 for q in queue[-2:])
    assert all(q >= w - 0.05 for q, w in zip(sorted(queue[-2:]), sorted(waited)))


def test_full_queue_answers_429_and_the_queued_requests_still_complete(make_server):
    server, client = make_server(max_queue=3)
    sched = server.service.scheduler
    sched.hold()
    with ThreadPoolExecutor(3) as pool:
        queued = [pool.submit(client.completions.create, model="tiny", prompt=f"q{i}", max_tokens=4, temperature=0)
                  for i in range(3)]
        _wait(lambda: sum(sched.waiting().values()) == 3)
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="tiny", prompt="one too many", max_tokens=4)
        assert e.value.status_code == 429 and "queue is full (3 requests waiting)" in str(e.value)
        sched.release()
        assert all(f.result().choices[0].finish_reason in ("stop", "length") for f in queued)
    server.service.reqlog.flush()
    import sqlite3

    with sqlite3.connect(server.cfg.log_db) as db:
        statuses = sorted(s for (s,) in db.execute("SELECT status FROM requests"))
    assert statuses == [200, 200, 200, 429]


def test_batches_group_only_requests_that_can_share_an_engine_call(make_server):
    server, client = make_server()
    sched = server.service.scheduler
    sched.hold()
    kinds = [dict(max_tokens=4, temperature=0), dict(max_tokens=4, temperature=0, top_p=0.5),  # greedy: top_p moot
             dict(max_tokens=5, temperature=0), dict(max_tokens=4, temperature=0.7, seed=1),
             dict(max_tokens=4, temperature=0.7, seed=1)]
    with ThreadPoolExecutor(len(kinds)) as pool:
        futures = [pool.submit(client.completions.create, model="tiny", prompt="x", **k) for k in kinds]
        _wait(lambda: sum(sched.waiting().values()) == len(kinds))
        n_before = len(sched.batches)
        sched.release()
        texts = [f.result().choices[0].text for f in futures]
    sizes = sorted(b.jobs for b in list(sched.batches)[n_before:])
    assert sizes == [1, 1, 1, 2]  # the two greedy max_tokens=4 requests together; seeded samples alone
    assert texts[3] == texts[4]  # a seeded sample does not depend on what else was queued


def test_a_client_that_goes_away_while_queued_does_not_break_the_worker(make_server):
    import httpx

    server, client = make_server()
    sched = server.service.scheduler
    sched.hold()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/completions", json={"model": "tiny", "prompt": "bye", "max_tokens": 4}, timeout=0.5)
    _wait(lambda: sum(sched.waiting().values()) == 1 or sched.waiting() == {})
    sched.release()
    r = client.completions.create(model="tiny", prompt="still here", max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and sched._thread.is_alive()
