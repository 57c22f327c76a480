"""The dashboard's web app (FastAPI; run by uvicorn from ``gmpo dashboard``): the page, its JSON API and a
Server-Sent Events stream.

One background task polls the run directories (:meth:`RunStore.refresh`, appended bytes only) and the
request log every ``poll_s`` seconds; each SSE client gets an ``update`` event when anything changed and then
re-fetches what it shows. Safety: the page and API read only the run directories and the request log given
at start (runs are addressed by index, never by path; static files come from a fixed list); with a token,
every request must carry it (``?token=`` once, then a cookie, or ``Authorization: Bearer``); on a loopback
bind, requests must name a loopback Host (DNS-rebinding guard). Nothing is ever written.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gmpo.dashboard.series import CHARTS, chart
from gmpo.dashboard.serving import ServeLog
from gmpo.dashboard.store import RunStore
from gmpo.dashboard.views import (alerts_payload, chart_payload, compare_payload, heatmap_payload, samples_payload,
                                  training_headline)

STATIC = {  # the only files the page may load: name -> content type
    "index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8", "serving.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8", "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml", "uPlot.LICENSE": "text/plain",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
COOKIE = "gmpo_dashboard_token"


class DashboardState:
    """The runs and the request log the app serves, and a version that bumps when any of them changes."""

    def __init__(self, run_dirs: list, serve_db=None, *, target_reward: float = 0.5, smooth: int = 1,
                 poll_s: float = 1.0, **store_kw):
        self.stores = [RunStore(d, i, **store_kw) for i, d in enumerate(run_dirs)]
        self.serve = ServeLog(serve_db) if serve_db else None
        self.target_reward, self.smooth, self.poll_s = target_reward, smooth, poll_s
        self.version, self._serve_version = 0, None
        self.load_s = 0.0

    def refresh(self) -> bool:
        """Poll every source once; True (and a new version) when anything changed."""
        changed = False
        for st in self.stores:
            changed |= st.refresh()
        if self.serve is not None:
            v = self.serve.version()
            changed |= v != self._serve_version
            self._serve_version = v
        if changed:
            self.version += 1
        return changed

    def status(self) -> dict:
        """What an SSE ``update`` event carries."""
        return {"version": self.version, "runs": [st.status() for st in self.stores],
                "serve": list(self._serve_version) if self._serve_version else None, "time": time.time()}

    def pick(self, runs: str | None) -> list[RunStore]:
        """Stores named by a comma-separated id list ('' or None: all); 404 for an unknown id."""
        if not runs:
            return self.stores
        out = []
        for part in runs.split(","):
            i = int(part) if part.strip().isdigit() else -1
            if not 0 <= i < len(self.stores):
                raise HTTPException(404, f"no run {part!r}: runs are 0..{len(self.stores) - 1}")
            out.append(self.stores[i])
        return out


def _static(name: str) -> bytes:
    return resources.files("gmpo.dashboard").joinpath("static", name).read_bytes()


class Guard:
    """ASGI middleware: Host check, token check, security headers on every response."""

    def __init__(self, app, token: str | None, allowed_hosts: set[str] | None):
        self.app, self.token, self.allowed_hosts = app, token, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None and headers.get("host", "").lower() not in self.allowed_hosts:
            return await _plain(send, 403, "forbidden: unexpected Host header (this dashboard answers on loopback only)")
        set_cookie = None
        if self.token is not None:
            given = _bearer(headers) or _cookie(headers.get("cookie", ""))
            query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
            if query is not None and hmac.compare_digest(query.encode(), self.token.encode()):
                given, set_cookie = query, f"{COOKIE}={query}; HttpOnly; SameSite=Strict; Path=/"
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                return await _plain(send, 401, "unauthorized: open the URL printed by `gmpo dashboard` (it carries "
                                               "?token=...) or send 'Authorization: Bearer TOKEN'")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                h = list(message.get("headers", []))
                h += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                      (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
                if set_cookie:
                    h.append((b"set-cookie", set_cookie.encode()))
                message = {**message, "headers": h}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _bearer(headers: dict) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _cookie(raw: str) -> str | None:
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == COOKIE:
            return v
    return None


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(state: DashboardState, *, token: str | None = None, allowed_hosts: set[str] | None = None) -> Any:
    """The ASGI app serving `state` (wrapped in :class:`Guard`)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        async def poll():
            while True:
                await asyncio.sleep(state.poll_s)
                try:
                    await asyncio.to_thread(state.refresh)
                except Exception as e:  # a transient read error must not kill the live updates
                    print(f"gmpo dashboard: refresh failed: {e}", flush=True)

        task = asyncio.create_task(poll())
        yield
        task.cancel()

    app = FastAPI(title="gmpo dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    _routes(app, state)
    return Guard(app, token, allowed_hosts)


def _window(x0: float | None, x1: float | None) -> tuple[float | None, float | None]:
    if x0 is not None and x1 is not None and x1 < x0:
        raise HTTPException(400, f"x1 ({x1}) < x0 ({x0})")
    return x0, x1


def _meta(state: DashboardState) -> dict:
    """What the page needs before its first data request: the runs, the chart table, the settings."""
    return {"runs": [st.info() for st in state.stores],
            "charts": [{"id": c.id, "title": c.title, "metrics": c.metrics, "help": c.help, "log_y": c.log_y}
                       for c in CHARTS],
            "serve": str(state.serve.path) if state.serve else None, "poll_s": state.poll_s,
            "target_reward": state.target_reward, "status": state.status()}


def _routes(app: FastAPI, state: DashboardState) -> None:
    """Register the page, the static files, the JSON API and the event stream on `app`."""
    _page_routes(app, state)
    _data_routes(app, state)
    _stream_route(app, state)

    @app.exception_handler(ValueError)
    async def bad_value(_request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def _page_routes(app: FastAPI, state: DashboardState) -> None:
    """The page (with its metadata embedded), the fixed list of static files, /api/meta, /api/health."""
    meta_dict = functools.partial(_meta, state)

    @app.get("/")
    def index() -> Response:
        # the page's metadata rides along as inert JSON (type application/json: never executed, CSP-safe),
        # saving the page a round trip before its first data request
        meta = json.dumps(meta_dict()).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        page = _static("index.html").replace(
            b"<!--META-->", f'<script id="gd-meta" type="application/json">{meta}</script>'.encode())
        return Response(page, media_type=STATIC["index.html"], headers={"cache-control": "no-store"})

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(_static(name), media_type=STATIC[name], headers={"cache-control": "no-cache"})

    @app.get("/api/meta")
    def meta() -> dict:
        return meta_dict()

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "load_s": state.load_s, **state.status()}


def _data_routes(app: FastAPI, state: DashboardState) -> None:
    """The JSON the page draws: charts, heat-maps, headline, comparison, samples, serving."""

    @app.get("/api/charts")
    def charts(runs: str = "", points: int = Query(600, ge=16, le=8000), x0: float | None = None,
               x1: float | None = None, ids: str = "") -> dict:
        x0, x1 = _window(x0, x1)
        stores = state.pick(runs)
        try:
            wanted = [chart(i) for i in ids.split(",")] if ids else list(CHARTS)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0])) from None
        return {"charts": {c.id: chart_payload(stores, c, x0, x1, points) for c in wanted},
                "alerts": alerts_payload(stores, x0, x1), "version": state.version}

    @app.get("/api/heatmap")
    def heatmaps(runs: str = "", cols: int = Query(600, ge=8, le=4000), x0: float | None = None,
                 x1: float | None = None) -> dict:
        x0, x1 = _window(x0, x1)
        return {"runs": [heatmap_payload(st, x0, x1, cols) for st in state.pick(runs)]}

    @app.get("/api/headline")
    def headline(run: int = 0) -> dict:
        st = state.pick(str(run))[0] if state.stores else None
        out = {"training": training_headline(st) if st else None, "serve": None}
        if state.serve is not None:
            out["serve"] = state.serve.headline()
        return out

    cache: dict = {}

    @app.get("/api/compare")
    def compare() -> dict:
        # rebuilt only when a run changed, and then at most once per 20x its last cost (on a 30,000-step run
        # it takes ~0.2 s: the live table lags by seconds rather than taking a core)
        key, now = tuple(st.version for st in state.stores), time.monotonic()
        if cache.get("key") != key and now - cache.get("at", -1e9) >= 20 * cache.get("cost", 0.0):
            value = compare_payload(state.stores, state.target_reward, state.smooth)
            cache.update(value=value, key=key, at=now, cost=time.monotonic() - now)
        return {**cache["value"], "stale": cache["key"] != key}

    @app.get("/api/samples")
    def samples(run: int = 0, step_min: float | None = None, step_max: float | None = None,
                reward_min: float | None = None, reward_max: float | None = None, text: str = "",
                limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict:
        st = state.pick(str(run))[0]
        return samples_payload(st, step_min=step_min, step_max=step_max, reward_min=reward_min,
                               reward_max=reward_max, text=text[:200], limit=limit, offset=offset)

    @app.get("/api/serve")
    def serve() -> dict:
        if state.serve is None:
            raise HTTPException(404, "no request log: start `gmpo dashboard` with --serve-db PATH")
        return {**state.serve.summary(), "recent": state.serve.sample_requests(limit=10)}



def _stream_route(app: FastAPI, state: DashboardState) -> None:
    """/api/stream: Server-Sent Events, an ``update`` (the state's status) whenever the version changes."""

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        async def events():
            yield "retry: 2000\n\n"
            last, quiet = None, 0.0
            while not await request.is_disconnected():
                if state.version != last:
                    last, quiet = state.version, 0.0
                    yield f"event: update\ndata: {json.dumps(state.status())}\n\n"
                elif quiet >= 15.0:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.25)
                quiet += 0.25

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})
