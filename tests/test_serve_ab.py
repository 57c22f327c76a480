"""gmpo serve A/B experiments and quality: sticky assignment (same user -> same arm; the split of 1,000 users
within tolerance of the weights), a fallback triggered by a scorer, the circuit breaker moving traffic to
control and firing an alert through console, alerts.jsonl and a webhook. Real servers on 127.0.0.1."""
import http.server
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
import yaml

from gmpo.serve.config import ServeConfig
from gmpo.serve.router import Arm, Experiment
from gmpo.serve.server import ServerThread
from gmpo.serve.testing import constant_model, tiny_pool


@pytest.fixture
def serve(tok, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = []

    def make(experiment: dict | None = None, **kw):
        if experiment is not None:
            (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
            kw["experiment"] = str(tmp_path / "exp.yaml")
        cfg = ServeConfig(log_db=str(tmp_path / "requests.db"), default_max_tokens=4, **kw)
        pool = tiny_pool(cfg, {"good": (constant_model(tok, "7"), tok), "good2": (constant_model(tok, "8"), tok),
                               "bad": (constant_model(tok, ""), tok)})
        s = ServerThread(cfg, pool).start()
        started.append(s)
        return s, openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)

    yield make
    for s in started:
        s.stop()
    torch.set_num_threads(threads)


def _rows(server, sql, *args):
    server.service.reqlog.flush()
    with sqlite3.connect(f"file:{server.cfg.log_db}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, args)]


def test_assignment_is_a_pure_function_of_experiment_and_user():
    exp = Experiment("policy", [Arm("a", "m1", 0.7), Arm("b", "m2", 0.3)], control="a")
    assert all(exp.assign(f"u{i}") == exp.assign(f"u{i}") for i in range(200))
    split = sum(exp.assign(f"user-{i}").name == "b" for i in range(20_000)) / 20_000
    assert abs(split - 0.3) < 0.015  # 4.6 standard errors
    # changing the weights is a new experiment (new id), and reshuffles users
    exp2 = Experiment("policy", [Arm("a", "m1", 0.5), Arm("b", "m2", 0.5)], control="a")
    assert exp2.id != exp.id and exp2.id.startswith("policy-")
    with pytest.raises(ValueError, match="control 'c' is not one of the arms"):
        Experiment("policy", [Arm("a", "m1", 1), Arm("b", "m2", 1)], control="c")
    with pytest.raises(ValueError, match="weight must be > 0"):
        Experiment("policy", [Arm("a", "m1", 1), Arm("b", "m2", 0)], control="a")


def test_sticky_assignment_and_split_over_1000_users(serve):
    exp = {"name": "policy", "control": "a", "arms": [{"name": "a", "model": "good", "weight": 0.5},
                                                       {"name": "b", "model": "good2", "weight": 0.5}]}
    server, client = serve(exp)

    def ask(user, header=False):
        kw = {"extra_headers": {"X-GMPO-User": user}} if header else {"user": user}
        r = client.completions.with_raw_response.create(model="policy", prompt="hi", max_tokens=1, temperature=0, **kw)
        return r.headers["x-gmpo-arm"], r.parse().choices[0].text

    with ThreadPoolExecutor(16) as pool:
        first = list(pool.map(ask, [f"user-{i}" for i in range(1000)]))
        again = list(pool.map(lambda u: ask(u, header=True), [f"user-{i}" for i in range(0, 1000, 10)]))
    assert [a for a, _ in again] == [first[i][0] for i in range(0, 1000, 10)]  # same user -> same arm (also by header)
    assert all(text == ("7" if arm == "a" else "8") for arm, text in first)  # the arm's model answered
    share_b = sum(arm == "b" for arm, _ in first) / 1000
    assert abs(share_b - 0.5) < 0.06  # 3.8 standard errors of a fair split
    rows = _rows(server, "SELECT experiment, arm, assigned_arm, user, model FROM requests")
    exp_id = server.service.router.experiment.id
    assert len(rows) == 1100 and all(r["experiment"] == exp_id and r["arm"] == r["assigned_arm"] for r in rows)
    by_user = {}
    for r in rows:
        by_user.setdefault(r["user"] or "", set()).add(r["arm"])
    assert all(len(arms) == 1 for u, arms in by_user.items() if u)
    started = _rows(server, "SELECT id, config FROM experiments")
    assert [s["id"] for s in started] == [exp_id] and json.loads(started[0]["config"])["weights"] == {"a": 0.5, "b": 0.5}
    assert _rows(server, "SELECT kind FROM events") == [{"kind": "experiment_start"}]


def test_a_low_score_falls_back_to_the_fallback_model(serve):
    server, client = serve(scorers=["nonempty"], fallback_model="good", fallback_threshold=0.5)
    r = client.chat.completions.with_raw_response.create(model="bad", messages=[{"role": "user", "content": "hi"}],
                                                         max_tokens=3, temperature=0)
    body = r.parse()
    assert r.headers["x-gmpo-fallback"] == "1"
    assert body.choices[0].message.content == "777"  # the fallback model's answer, not the empty one
    assert body.model_extra["gmpo"]["fallback"] is True and body.model_extra["gmpo"]["served_model"] == "good"
    ok = client.chat.completions.with_raw_response.create(model="good", messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=3, temperature=0)
    assert ok.headers["x-gmpo-fallback"] == "0"
    rows = _rows(server, "SELECT model, fallback, fallback_model, quality, scores, completion FROM requests ORDER BY ts")
    assert [(x["model"], x["fallback"], x["fallback_model"]) for x in rows] == [("bad", 1, "good"), ("good", 0, None)]
    assert rows[0]["quality"] == 0.0 and json.loads(rows[0]["scores"]) == {"nonempty": 0.0, "fallback_quality": 1.0}
    assert rows[0]["completion"] == "777"


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_circuit_breaker_moves_traffic_to_control_and_alerts(serve, tmp_path, capfd):
    hook = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received.clear()
    exp = {"name": "policy", "control": "stable", "arms": [{"name": "stable", "model": "good", "weight": 1},
                                                            {"name": "cand", "model": "bad", "weight": 1}]}
    server, client = serve(exp, scorers=["nonempty"], breaker_threshold=0.5, breaker_window=10, breaker_min_requests=5,
                           webhook_url=f"http://127.0.0.1:{hook.server_address[1]}/alert",
                           alerts_path=str(tmp_path / "alerts.jsonl"))
    experiment = server.service.router.experiment
    cand_users = [u for u in (f"u{i}" for i in range(200)) if experiment.assign(u).name == "cand"][:12]

    def ask(user):
        r = client.completions.with_raw_response.create(model="policy", prompt="q", max_tokens=2, temperature=0,
                                                        user=user)
        return r.headers["x-gmpo-arm"], r.parse().choices[0].text

    before = [ask(u) for u in cand_users[:5]]
    assert before == [("cand", "")] * 5  # the bad arm answers (empty) until its window has 5 responses
    after = [ask(u) for u in cand_users[5:]]
    assert after == [("stable", "77")] * len(after)  # breaker open: cand's users get the control arm
    rows = _rows(server, "SELECT arm, assigned_arm FROM requests ORDER BY ts")
    assert [(r["arm"], r["assigned_arm"]) for r in rows] == [("cand", "cand")] * 5 + [("stable", "cand")] * len(after)
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == 1 and alerts[0]["detector"] == "quality_breaker" and alerts[0]["arm"] == "cand"
    assert alerts[0]["value"] == 0.0 and alerts[0]["threshold"] == 0.5 and alerts[0]["action"] == "reroute"
    assert {"step", "detector", "value", "threshold", "action", "time", "message"} <= set(alerts[0])
    events = _rows(server, "SELECT kind, arm FROM events WHERE kind != 'experiment_start'")
    assert events == [{"kind": "breaker_open", "arm": "cand"}, {"kind": "alert", "arm": "cand"}]
    assert "quality_breaker" in capfd.readouterr().err  # the console line
    for _ in range(200):
        if _Hook.received:
            break
        threading.Event().wait(0.02)
    assert _Hook.received and _Hook.received[0]["detector"] == "quality_breaker"
    assert _Hook.received[0]["source"] == "gmpo.serve"  # not the training guard
    hook.shutdown()
    # after the cooldown the arm gets traffic again (half-open) and the close is logged
    server.service.monitor.cfg.breaker_cooldown_s = 0.0
    assert ask(cand_users[0]) == ("cand", "")
    assert _rows(server, "SELECT kind FROM events WHERE kind='breaker_close'") == [{"kind": "breaker_close"}]
