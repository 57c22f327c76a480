"""The OpenAI wire format: request validation into :class:`GenRequest`, response and stream-chunk bodies.

Validation is by hand rather than by a pydantic model so that every bad field gets a 400 with an
OpenAI-style error body naming the field and what is wrong (FastAPI's default is a 422 with a pydantic
trace). Known-but-unsupported options (tools, logprobs, penalties, echo, best_of) are rejected with a
clear message instead of being silently ignored; unknown fields are ignored, as vLLM does.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_PROMPTS = 16  # prompts in one /v1/completions request


class APIError(Exception):
    """An error answered with an OpenAI-style body ``{"error": {message, type, param, code}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class GenRequest:
    """One validated generation request (chat or completions)."""

    endpoint: str  # "chat" | "completions"
    model: str  # the name the client sent
    prompts: list[Any]  # chat: [messages]; completions: prompt strings or token-id lists
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    user: str = ""
    stream: bool = False
    include_usage: bool = False
    reference: str | None = None  # metadata.reference: the expected answer, for reference-based scorers
    id: str = ""
    created: int = 0

    def __post_init__(self):
        if not self.id:
            self.id = ("chatcmpl-" if self.endpoint == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = self.created or int(time.time())


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def _number(body: dict, key: str, default: float, lo: float, hi: float, *, integer: bool = False, lo_open=False):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise _bad(f"'{key}' must be {'an integer' if integer else 'a number'}, got {json.dumps(v)[:40]}", key)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise _bad(f"'{key}' must be in {left}{lo:g}, {hi:g}], got {v}", key)
    return v


def _common(body: dict, limits) -> dict:
    """The sampling options shared by both endpoints, validated against the server's limits."""
    for key, what in (("tools", "tool calls"), ("functions", "function calls"), ("logit_bias", "logit_bias")):
        if body.get(key):
            raise _bad(f"'{key}' is not supported by gmpo serve ({what})", key)
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs"):
        raise _bad("'logprobs' is not supported by gmpo serve", "logprobs")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise _bad(f"'{key}' is not supported by gmpo serve (send 0 or leave it out)", key)
    out = {
        "temperature": float(_number(body, "temperature", 1.0, 0.0, 2.0)),
        "top_p": float(_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)),
        "top_k": int(_number(body, "top_k", 0, 0, 1_000_000, integer=True)),
        "n": int(_number(body, "n", 1, 1, limits.max_n, integer=True)),
        "seed": _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True),
    }
    top_k = body.get("top_k")
    if top_k == -1:  # vLLM's spelling of "off"
        out["top_k"] = 0
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop) or len(stop) > MAX_STOP:
        raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP} non-empty strings", "stop")
    out["stop"] = stop
    user = body.get("user", "")
    if not isinstance(user, str) or len(user) > 256:
        raise _bad("'user' must be a string of at most 256 characters", "user")
    out["user"] = user
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _bad("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    out["stream"], out["include_usage"] = stream, bool(opts.get("include_usage", False))
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise _bad("'metadata' must be an object of string values", "metadata")
    ref = meta.get("reference", meta.get("answer"))
    if ref is not None and not isinstance(ref, (str, int, float)):
        raise _bad("'metadata.reference' must be a string (the expected answer)", "metadata")
    out["reference"] = None if ref is None else str(ref)
    return out


def _max_tokens(body: dict, limits, *keys: str) -> int:
    for key in keys:
        if body.get(key) is not None:
            return int(_number(body, key, 0, 1, limits.max_tokens_limit, integer=True))
    return int(limits.default_max_tokens)


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: the name of a served model (GET /v1/models lists them) or an experiment",
                   "model")
    return model


def parse_chat(body: Any, limits) -> GenRequest:
    """Validate a ``POST /v1/chat/completions`` body; raise :class:`APIError` (400) on bad input."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer"):
            raise _bad(f"messages[{i}] needs a 'role' of system, user, assistant or developer", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if any(not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str)
                   for p in content):
                raise _bad(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad(f"messages[{i}].content must be a string", "messages")
        messages[i] = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
    return GenRequest("chat", _model(body), [messages], _max_tokens(body, limits, "max_completion_tokens", "max_tokens"),
                      **_common(body, limits))


def parse_completions(body: Any, limits) -> GenRequest:
    """Validate a ``POST /v1/completions`` body; raise :class:`APIError` (400) on bad input."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    if body.get("echo") or body.get("suffix") or (body.get("best_of") not in (None, 1)):
        raise _bad("'echo', 'suffix' and 'best_of' are not supported by gmpo serve", "echo")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise _bad("'prompt' must be a string, a list of strings, or a list of token ids", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise _bad(f"'prompt' has {len(prompts)} prompts; at most {MAX_PROMPTS} per request", "prompt")
    if any(isinstance(p, str) and not p for p in prompts):
        raise _bad("'prompt' must not be empty", "prompt")
    return GenRequest("completions", _model(body), prompts, _max_tokens(body, limits, "max_tokens"),
                      **_common(body, limits))


# ---------------------------------------------------------------------------------------------
# responses


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_body(req: GenRequest, model: str, choices: list[tuple[str, str]], use: dict, extra: dict) -> dict:
    """A complete (non-streaming) response; ``choices`` are (text, finish_reason) in index order."""
    if req.endpoint == "chat":
        cs = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": None}
              for i, (t, f) in enumerate(choices)]
        obj = "chat.completion"
    else:
        cs = [{"index": i, "text": t, "finish_reason": f, "logprobs": None} for i, (t, f) in enumerate(choices)]
        obj = "text_completion"
    return {"id": req.id, "object": obj, "created": req.created, "model": model, "choices": cs, "usage": use,
            "system_fingerprint": None, "gmpo": extra}


def _chunk(req: GenRequest, model: str, choices: list[dict], use: dict | None = None) -> str:
    obj = "chat.completion.chunk" if req.endpoint == "chat" else "text_completion"
    body = {"id": req.id, "object": obj, "created": req.created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return f"data: {json.dumps(body)}\n\n"


def stream_events(req: GenRequest, model: str, pieces: list[list[str]], finish: list[str], use: dict):
    """Server-sent events of a streamed response: per choice its text pieces, then the finish reason, then
    (with ``stream_options.include_usage``) a usage chunk with empty choices, then ``data: [DONE]``."""
    chat = req.endpoint == "chat"
    for i, parts in enumerate(pieces):
        if chat:
            yield _chunk(req, model, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None, "logprobs": None}])
        for p in parts:
            d = {"index": i, "delta": {"content": p}} if chat else {"index": i, "text": p}
            yield _chunk(req, model, [{**d, "finish_reason": None, "logprobs": None}])
        end = {"index": i, "delta": {}} if chat else {"index": i, "text": ""}
        yield _chunk(req, model, [{**end, "finish_reason": finish[i], "logprobs": None}])
    if req.include_usage:
        yield _chunk(req, model, [], use)
    yield "data: [DONE]\n\n"


STREAM_CHUNK_TOKENS = 16  # tokens per streamed content chunk


def text_pieces(tokenizer, ids: list[int], text: str, every: int = STREAM_CHUNK_TOKENS) -> list[str]:
    """Split a completion's final ``text`` into pieces of about ``every`` tokens for streaming.

    The engine hands over a completion when its batch ends, so per-token chunks would only add per-chunk
    costs on both sides (one SSE event and one client-side parse each); pieces of ``every`` tokens keep the
    stream shape. Pieces come from incremental decoding of token prefixes (a cut inside a multi-byte
    character moves to the next boundary) and always concatenate to ``text``.
    """
    pieces, prev = [], ""
    for k in range(every, len(ids), every):
        cur = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if len(cur) > len(prev) and text.startswith(cur) and "\ufffd" not in cur:
            pieces.append(cur[len(prev):])
            prev = cur
    if len(text) > len(prev):
        pieces.append(text[len(prev):])
    return pieces
