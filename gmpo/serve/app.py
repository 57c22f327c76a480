"""The FastAPI routes of ``gmpo serve`` (OpenAI-compatible) over a :class:`gmpo.serve.service.Service`.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``POST /v1/feedback``,
``GET /metrics`` (Prometheus text), ``GET /health``. With an API key every route but ``/health`` needs
``Authorization: Bearer KEY`` (``/metrics`` too, unlike vLLM). Bodies larger than ``max_body_bytes`` get
a 413; every error has an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.
"""
# no "from __future__ import annotations": FastAPI resolves the route parameters' annotations at runtime

import hmac
import json
import time

from gmpo.serve.protocol import APIError, parse_chat, parse_completions, response_body, stream_events, text_pieces
from gmpo.serve.protocol import usage as make_usage

USER_HEADER = "x-gmpo-user"
FEEDBACK_KINDS = ("thumbs", "score", "correct")


def _feedback_value(kind: str, value) -> float:
    """Feedback as a number in [0, 1]: thumbs up/down -> 1/0, correct/incorrect -> 1/0, a score in [0, 1]."""
    if kind == "thumbs":
        table = {"up": 1.0, "down": 0.0, True: 1.0, False: 0.0, 1: 1.0, -1: 0.0, 0: 0.0}
        if isinstance(value, (str, bool, int)) and value in table:
            return table[value]
        raise APIError(400, "thumbs feedback 'value' must be \"up\", \"down\", true/false or 1/-1", "value")
    if kind == "correct":
        if isinstance(value, bool) or value in (0, 1):
            return float(value)
        raise APIError(400, "correct feedback 'value' must be true or false", "value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise APIError(400, "score feedback 'value' must be a number in [0, 1]", "value")
    return float(value)


def build_app(service):
    """The FastAPI application of a :class:`Service` (its lifespan closes the service: drain + log commit)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close(service.cfg.drain_timeout_s)

    app = FastAPI(title="gmpo serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _add_guards(app, service.cfg)
    _add_generation_routes(app, service)
    _add_other_routes(app, service)
    return app


def _add_guards(app, cfg) -> None:
    """Error bodies, the API key check and the body-size limit (before any route runs)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _internal(request, err: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(err).__name__}: {err}").body(), status_code=500)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if cfg.api_key and request.url.path != "/health":
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not token or not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
                msg = "missing API key: send 'Authorization: Bearer KEY'" if not token else "invalid API key"
                return JSONResponse(APIError(401, msg, code="invalid_api_key").body(), status_code=401)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            return JSONResponse(APIError(413, f"the request body has {length} bytes, more than the limit of "
                                              f"{cfg.max_body_bytes}").body(), status_code=413)
        return await call_next(request)


async def read_json(request, limit: int):
    """The request's JSON body, read up to ``limit`` bytes (413 past it, 400 when it is not JSON)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is larger than the limit of {limit} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


def _add_generation_routes(app, service) -> None:
    """``/v1/chat/completions`` and ``/v1/completions`` (plain JSON or server-sent events)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, StreamingResponse

    cfg = service.cfg

    async def generate(request: Request, parse):
        t0, ts = time.perf_counter(), time.time()
        req = None
        user = request.headers.get(USER_HEADER, "")
        try:
            req = parse(await read_json(request, cfg.max_body_bytes), cfg)
            out = await service.generate(req, req.user or user, t0, ts)
        except APIError as err:
            service.record_error(req, err, t0, ts, user)
            raise
        except Exception as e:  # noqa: BLE001 - answered as a 500 with an OpenAI-style body, and logged
            err = APIError(500, f"generation failed: {type(e).__name__}: {e}")
            service.record_error(req, err, t0, ts, user)
            raise err from e
        headers = {"x-request-id": req.id, "x-gmpo-fallback": str(int(out.fallback))}
        if out.route.arm:
            headers["x-gmpo-arm"] = out.route.arm
        use = make_usage(out.prompt_tokens, out.completion_tokens)
        if not req.stream:
            body = response_body(req, req.model, out.choices, use, out.extra)
            service.record(out, time.perf_counter() - t0)
            return JSONResponse(body, headers=headers)
        tok = out.served.tokenizer
        pieces = [text_pieces(tok, ids, text) for ids, (text, _) in zip(out.ids, out.choices)]

        async def events():
            first = None
            try:
                for ev in stream_events(req, req.model, pieces, [f for _, f in out.choices], use):
                    if first is None:
                        first = time.perf_counter() - t0
                    yield ev
            finally:
                service.record(out, first if first is not None else time.perf_counter() - t0)

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, parse_chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, parse_completions)


def _add_other_routes(app, service) -> None:
    """``/v1/models``, ``/v1/feedback``, ``/metrics``, ``/health``."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    @app.get("/v1/models")
    async def models():
        data = []
        for name in service.pool.names():
            m = service.pool.get(name)
            data.append({"id": name, "object": "model", "created": int(service.started), "owned_by": "gmpo",
                         "root": m.path, "version": m.label, "max_model_len": m.max_positions})
        exp = service.router.experiment
        if exp is not None:
            data.append({"id": exp.name, "object": "model", "created": int(service.started), "owned_by": "gmpo",
                         "experiment": exp.id, "arms": exp.design()["arms"]})
        return {"object": "list", "data": data}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = await read_json(request, service.cfg.max_body_bytes)
        if not isinstance(body, dict):
            raise APIError(400, "the body must be an object {request_id, kind, value, comment?}")
        rid, kind, comment = body.get("request_id"), body.get("kind"), body.get("comment", "")
        if not isinstance(rid, str) or not rid:
            raise APIError(400, "'request_id' is required: the id of a response (its 'id' field)", "request_id")
        if kind not in FEEDBACK_KINDS:
            raise APIError(400, f"'kind' must be one of {', '.join(FEEDBACK_KINDS)}", "kind")
        if not isinstance(comment, str) or len(comment) > 4000:
            raise APIError(400, "'comment' must be a string of at most 4000 characters", "comment")
        value = _feedback_value(kind, body.get("value"))
        if not await run_in_threadpool(service.reqlog.has_request, rid):
            raise APIError(404, f"no request with id {rid!r} in the request log", "request_id")
        service.reqlog.feedback(rid, kind, value, comment)
        return {"object": "feedback", "request_id": rid, "kind": kind, "value": value}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": service.pool.names(), "waiting": sum(service.scheduler.waiting().values()),
                "running": sum(dict(service.scheduler.running).values())}
