"""gmpo serve, the OpenAI API: a real server on 127.0.0.1 (free port) with the tiny test model, driven by the
real `openai` client (and httpx for raw HTTP): chat (plain and streamed), completions, n > 1, stop strings,
/v1/models, auth (401 also on /metrics), 400s/413 with OpenAI-style bodies, metrics, feedback, the log."""
import json
import sqlite3

import httpx
import openai
import pytest
import torch

from gmpo.data.prompts import PromptEncoder
from gmpo.models import load_model
from gmpo.rollout import SamplingParams, make_engine
from gmpo.serve.config import ModelSpec, ServeConfig
from gmpo.serve.server import ServerThread

KEY = "sk-test-123"
MSG = [{"role": "user", "content": "What is 12 + 30?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    log = tmp_path_factory.mktemp("serve_api") / "requests.db"
    cfg = ServeConfig(models=[ModelSpec("tiny", str(tiny_model_dir))], api_key=KEY, log_db=str(log),
                      max_n=4, max_tokens_limit=64, default_max_tokens=16, max_prompt_tokens=200,
                      max_body_bytes=20_000)
    with ServerThread(cfg) as s:
        yield s
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The engine and encoder the server should be equivalent to."""
    model, tok = load_model(str(tiny_model_dir))
    return make_engine("engine", model, tok), tok


def _root(server):
    return server.url[: -len("/v1")]


def _metric(text: str, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def test_chat_answers_like_the_engine_on_the_chat_template(client, reference):
    engine, tok = reference
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    _, ids = PromptEncoder(tok).encode_messages(MSG)
    want = engine.generate([ids], SamplingParams(max_new_tokens=12, temperature=0))
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.texts[0]
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == int(want.lengths[0])
    assert r.usage.total_tokens == len(ids) + int(want.lengths[0])
    assert r.choices[0].finish_reason == ("length" if bool(want.truncated[0]) else "stop")


def test_streamed_chat_matches_the_plain_answer(client, server):
    plain = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    n_content = len([c for c in chunks if c.choices and c.choices[0].delta.content])
    assert n_content == -(-plain.usage.completion_tokens // 16)  # a content chunk per 16 tokens
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    # raw SSE: every event is a data line and the stream ends with [DONE]
    body = {"model": "tiny", "messages": MSG, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(e[6:]) for e in events[:-1])  # no include_usage: no usage chunk


def test_completions_use_the_plain_prompt_without_template(client, reference):
    engine, tok = reference
    prompt = "12 + 30 ="
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    want = engine.generate([ids], SamplingParams(max_new_tokens=10, temperature=0))
    assert r.object == "text_completion" and r.choices[0].text == want.texts[0]
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == int(want.lengths[0])


def test_n_samples_and_seed(client):
    r = client.completions.create(model="tiny", prompt="abc", max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.text for c in r.choices}) > 1  # three different samples of a random model
    again = client.completions.create(model="tiny", prompt="abc", max_tokens=8, n=3, temperature=1.0, seed=7)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # a seed reproduces the samples
    assert all(c.finish_reason in ("stop", "length") for c in r.choices) and 3 <= r.usage.completion_tokens <= 24
    chat = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, n=2, temperature=0)
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content


def test_stop_strings_end_the_answer_before_the_stop(client):
    full = client.completions.create(model="tiny", prompt="hello", max_tokens=30, temperature=0).choices[0].text
    assert len(full) >= 8, full
    stop = full[5:7]
    cut = full.index(stop)
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=30, temperature=0, stop=[stop, "@@@@"])
    assert r.choices[0].text == full[:cut]
    assert r.choices[0].finish_reason == "stop"


def test_models_lists_the_served_models(client, tiny_model_dir):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].owned_by == "gmpo" and models[0].root == str(tiny_model_dir)


def test_auth_missing_or_wrong_key_is_401_everywhere_but_health(server):
    bad = openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert e.value.status_code == 401 and "invalid API key" in str(e.value)
    root = _root(server)
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(root + path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert "missing API key" in r.json()["error"]["message"]
        assert httpx.get(root + path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(root + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(root + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("body, param, words", [
    ({"model": "tiny"}, "messages", "non-empty list"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages", "role"),
    ({"messages": MSG}, "model", "required"),
    ({"model": "tiny", "messages": MSG, "temperature": 5}, "temperature", "[0, 2]"),
    ({"model": "tiny", "messages": MSG, "n": 0}, "n", "[1, 4]"),
    ({"model": "tiny", "messages": MSG, "n": 5}, "n", "[1, 4]"),
    ({"model": "tiny", "messages": MSG, "max_tokens": 65}, "max_tokens", "[1, 64]"),
    ({"model": "tiny", "messages": MSG, "max_tokens": "ten"}, "max_tokens", "integer"),
    ({"model": "tiny", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"model": "tiny", "messages": MSG, "logprobs": True}, "logprobs", "not supported"),
    ({"model": "tiny", "messages": MSG, "top_p": 0}, "top_p", "(0, 1]"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 400}]}, "messages", "limit of 200"),
])
def test_bad_input_gets_400_saying_what_is_wrong(server, body, param, words):
    r = httpx.post(server.url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and words in err["message"], err


def test_bad_input_through_the_client_and_other_errors(client, server):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=MSG, temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist; served: tiny"):
        client.chat.completions.create(model="nope", messages=MSG)
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(server.url + "/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/completions", content=json.dumps({"model": "tiny", "prompt": "x" * 30_000}), headers=h)
    assert r.status_code == 413 and "limit of 20000" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/completions", json={"model": "tiny", "prompt": [5, 10**7]}, headers=h)
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]


def test_metrics_count_tokens_and_latencies(client, server):
    h = {"Authorization": f"Bearer {KEY}"}
    before = httpx.get(_root(server) + "/metrics", headers=h).text
    r = client.completions.create(model="tiny", prompt="metrics", max_tokens=6, temperature=0)
    after = httpx.get(_root(server) + "/metrics", headers=h).text
    gen = "gmpo:generation_tokens_total"
    assert _metric(after, gen, model="tiny") - _metric(before, gen, model="tiny") == r.usage.completion_tokens
    assert (_metric(after, "gmpo:prompt_tokens_total", model="tiny")
            - _metric(before, "gmpo:prompt_tokens_total", model="tiny")) == r.usage.prompt_tokens
    fin = r.choices[0].finish_reason
    ok = "gmpo:request_success_total"
    assert _metric(after, ok, finished_reason=fin) - _metric(before, ok, finished_reason=fin) == 1
    for name in ("gmpo:time_to_first_token_seconds", "gmpo:inter_token_latency_seconds",
                 "gmpo:e2e_request_latency_seconds", "gmpo:request_queue_time_seconds"):
        assert _metric(after, name + "_count", model="tiny", arm="none") >= 1, name
    assert "# TYPE gmpo:num_requests_running gauge" in after and "# TYPE gmpo:num_requests_waiting gauge" in after
    assert _metric(after, "gmpo:batch_size_count", model="tiny") >= 1


def test_feedback_and_the_request_log(client, server):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0, user="alice",
                                       metadata={"reference": "42"})
    h = {"Authorization": f"Bearer {KEY}"}
    fb = httpx.post(server.url + "/feedback", json={"request_id": r.id, "kind": "thumbs", "value": "down",
                                                     "comment": "wrong"}, headers=h)
    assert fb.status_code == 200 and fb.json()["value"] == 0.0
    assert httpx.post(server.url + "/feedback", json={"request_id": r.id, "kind": "score", "value": 0.7},
                      headers=h).status_code == 200
    bad = httpx.post(server.url + "/feedback", json={"request_id": "chatcmpl-nope", "kind": "thumbs", "value": "up"},
                     headers=h)
    assert bad.status_code == 404
    assert httpx.post(server.url + "/feedback", json={"request_id": r.id, "kind": "stars", "value": 5},
                      headers=h).status_code == 400
    server.service.reqlog.flush()
    with sqlite3.connect(f"file:{server.cfg.log_db}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM requests WHERE id=?", (r.id,)).fetchone()
        feedback = db.execute("SELECT kind, value, comment FROM feedback WHERE request_id=? ORDER BY ts",
                              (r.id,)).fetchall()
    assert row["endpoint"] == "chat" and row["model"] == "tiny" and row["user"] == "alice" and row["status"] == 200
    assert row["prompt_tokens"] == r.usage.prompt_tokens and row["completion_tokens"] == r.usage.completion_tokens
    assert row["finish_reason"] == r.choices[0].finish_reason and row["completion"] == r.choices[0].message.content
    assert row["reference"] == "42" and row["fallback"] == 0 and row["n"] == 1
    assert 0 < row["queue_s"] <= row["ttft_s"] <= row["latency_s"] < 30
    scores = json.loads(row["scores"])
    assert set(scores) == {"nonempty", "not_truncated", "repetition"}
    assert row["quality"] == pytest.approx(sum(scores.values()) / 3)
    assert "What is 12 + 30?" in row["prompt"]
    assert [tuple(f) for f in feedback] == [("thumbs", 0.0, "wrong"), ("score", 0.7, "")]
