"""The request pipeline, independent of the web framework: route, encode, batch, score, fall back, log.

:class:`Service` owns the parts (model pool, scheduler, router, scorers, quality monitor, request log,
metrics); :mod:`gmpo.serve.app` only translates HTTP to :meth:`Service.generate` and back.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from gmpo.serve.protocol import APIError, GenRequest
from gmpo.serve.quality import AlertSinks, QualityMonitor, Scorers, combine
from gmpo.serve.router import Experiment, Route, Router
from gmpo.serve.scheduler import Closing, Job, QueueFull, Scheduler


@dataclass
class Outcome:
    """A finished generation, ready to be written as a response and logged."""

    req: GenRequest
    route: Route
    served: object  # the ServedModel whose answer is returned (the fallback model's after a fallback)
    prompt_text: str
    choices: list[tuple[str, str]]  # (text, finish_reason)
    ids: list[list[int]]
    prompt_tokens: int
    quality: float | None
    scores: dict
    fallback: bool
    queue_s: float
    itl_s: float
    t_arrival: float  # perf_counter at arrival
    ts: float  # unix time at arrival
    model_version: str
    extra: dict = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        """Completion tokens over all choices."""
        return sum(len(x) for x in self.ids)


class Service:
    """Everything behind the routes. ``pool`` may be given already loaded (tests); else it is loaded."""

    def __init__(self, cfg, pool=None):
        from gmpo.serve.metrics import ServeMetrics
        from gmpo.serve.models import ModelPool
        from gmpo.serve.reqlog import RequestLog

        cfg.validate()
        self.cfg = cfg
        self.reqlog = RequestLog(cfg.log_db)
        self.pool = pool or ModelPool(cfg, on_reload=self._on_reload)
        if pool is None:
            self.pool.load_all()
        else:
            pool.on_reload = self._on_reload
        self.scheduler = Scheduler(cfg.max_queue, cfg.max_batch_rows, cfg.batch_wait_s)
        experiment = Experiment.load(cfg.experiment) if cfg.experiment else None
        self.router = Router(experiment, self.pool.names())
        alerts = cfg.alerts_path or str(Path(cfg.log_db).resolve().parent / "alerts.jsonl")
        self.sinks = AlertSinks(alerts, cfg.webhook_url)
        self.scorers = Scorers(cfg.scorers, cfg.rewards)
        self.monitor = QualityMonitor(cfg, self.router, self.sinks, self.reqlog)
        self.metrics = ServeMetrics(self.scheduler)
        self.scheduler.on_batch = lambda rec: self.metrics.batch_rows.labels(rec.model).observe(rec.rows)
        if experiment is not None and self.reqlog.experiment(experiment.id, experiment.config_json()):
            self.reqlog.event("experiment_start", f"experiment {experiment.id} started: {experiment.config_json()}",
                              experiment=experiment.id)
        self.pool.start_watcher()
        self.started = time.time()

    def _on_reload(self, name: str, old, new) -> None:
        self.reqlog.event("model_reload", f"{name}: {old.label if old else '-'} -> {new.label}", model=name)

    def close(self, timeout: float | None = None) -> bool:
        """Finish queued work, stop the threads, commit the log; True when the queue drained in time."""
        self.pool.stop()
        drained = self.scheduler.close(timeout)
        self.reqlog.close()
        return drained

    # -- the pipeline -----------------------------------------------------------------------------

    def resolve(self, req: GenRequest, user: str) -> Route:
        """The route of a request: an experiment arm, or the named model; 404 for an unknown name."""
        self.monitor.tick()
        route = self.router.route(req.model, user or req.id)
        if route is not None:
            return route
        if self.pool.get(req.model) is not None:
            return Route(req.model)
        names = self.pool.names() + ([self.router.experiment.name] if self.router.experiment else [])
        raise APIError(404, f"the model '{req.model}' does not exist; served: {', '.join(names)}", "model",
                       "model_not_found")

    def encode(self, served, req: GenRequest) -> tuple[str, list[list[int]]]:
        """(prompt text for the log, token ids of each prompt) through the shared prompt encoder."""
        from gmpo.data.prompts import PromptEncoder

        try:
            if req.endpoint == "chat":
                text, ids = served.encoder.encode_messages(req.prompts[0])
                all_ids = [ids]
            else:
                plain = PromptEncoder(served.tokenizer, template="plain", max_prompt_tokens=self.cfg.max_prompt_tokens)
                strs = [p for p in req.prompts if isinstance(p, str)]
                enc = plain.encode_batch(strs)[1] if strs else []
                all_ids, k = [], 0
                for p in req.prompts:
                    if isinstance(p, str):
                        all_ids.append(enc[k])
                        k += 1
                    else:
                        all_ids.append(self._check_ids(served, p))
                text = "\n".join(p if isinstance(p, str) else served.tokenizer.decode(p) for p in req.prompts)
        except APIError:
            raise
        except ValueError as e:
            raise APIError(400, str(e), "messages" if req.endpoint == "chat" else "prompt") from None
        longest = max(len(x) for x in all_ids)
        if longest == 0:
            raise APIError(400, "the prompt encodes to no tokens", "prompt")
        if served.max_positions and longest + req.max_tokens > served.max_positions:
            raise APIError(400, f"the prompt has {longest} tokens; with max_tokens={req.max_tokens} that is beyond "
                                f"the model's context of {served.max_positions} tokens", "max_tokens")
        return text, all_ids

    def _check_ids(self, served, ids: list[int]) -> list[int]:
        vocab = len(served.tokenizer)
        if any(t < 0 or t >= vocab for t in ids):
            raise APIError(400, f"'prompt' has a token id outside the vocabulary [0, {vocab})", "prompt")
        if len(ids) > self.cfg.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(ids)} tokens, more than the limit of "
                                f"{self.cfg.max_prompt_tokens}", "prompt")
        return list(ids)

    async def _run(self, served, req: GenRequest, ids: list[list[int]]):
        from gmpo.rollout import SamplingParams

        params = SamplingParams(n=req.n, max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                top_k=req.top_k, stop=list(req.stop), seed=req.seed)
        try:
            fut = self.scheduler.submit(Job(served, ids, params))
        except QueueFull as e:
            raise APIError(429, str(e), code="queue_full") from None
        except Closing as e:
            raise APIError(503, str(e), code="shutting_down") from None
        return await asyncio.wrap_future(fut)

    def _score(self, prompt_text: str, res, reference: str | None):
        scores = self.scorers.score(prompt_text, res.texts, res.completion_ids, res.finish, reference)
        return combine(scores)

    async def generate(self, req: GenRequest, user: str = "", t0: float | None = None, ts: float | None = None) -> Outcome:
        """Run one request end to end (raises APIError for 4xx/5xx answers); ``t0`` (perf_counter) and ``ts``
        (unix time) mark its arrival (default: now)."""
        t0, ts = t0 or time.perf_counter(), ts or time.time()
        req.user = req.user or user  # the X-GMPO-User header counts as the user when the body names none
        route = self.resolve(req, req.user)
        try:
            served = self.pool.get(route.model)
            text, ids = self.encode(served, req)
            res = await self._run(served, req, ids)
            # scorers may be slow (math-verify has a timeout): off the event loop
            quality, scores = await asyncio.to_thread(self._score, text, res, req.reference)
            fallback = False
            answer_model, answer = served, res
            fb_name = self.cfg.fallback_model
            if self.monitor.needs_fallback(quality) and fb_name and fb_name != route.model:
                fb = self.pool.get(fb_name)
                fb_text, fb_ids = self.encode(fb, req)
                answer = await self._run(fb, req, fb_ids)
                fb_quality, _ = await asyncio.to_thread(self._score, fb_text, answer, req.reference)
                scores = {**scores, "fallback_quality": fb_quality}
                fallback, answer_model = True, fb
        except APIError as e:
            e.route = route  # the log records which arm the failed request was routed to
            raise
        self.monitor.observe(route.arm, quality)
        itl = res.compute_s / max(res.steps, 1)
        extra = {"experiment": route.experiment, "arm": route.arm, "served_model": answer_model.name,
                 "quality": quality, "fallback": fallback, "batch_rows": res.batch_rows}
        texts = [_strip_stop(t, f, req.stop) for t, f in zip(answer.texts, answer.finish)]
        return Outcome(req, route, answer_model, text, list(zip(texts, answer.finish)), answer.completion_ids,
                       sum(len(x) for x in ids), quality, scores, fallback, res.queue_s, itl, t0, ts,
                       answer_model.label, extra)

    # -- recording --------------------------------------------------------------------------------

    def record(self, out: Outcome, ttft_s: float, status: int = 200) -> None:
        """Metrics and the log row of a finished request (called once the answer is sent)."""
        latency = time.perf_counter() - out.t_arrival
        r = out.route
        self.metrics.observe(r.model, r.arm, prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                             finish=[f for _, f in out.choices], queue_s=out.queue_s, ttft_s=ttft_s,
                             latency_s=latency, itl_s=out.itl_s, quality=out.quality, fallback=out.fallback)
        finish = "length" if any(f == "length" for _, f in out.choices) else "stop"
        completion = out.choices[0][0] if len(out.choices) == 1 else _json([t for t, _ in out.choices])
        self.reqlog.request(
            id=out.req.id, ts=out.ts, experiment=r.experiment, arm=r.arm, model=r.model, user=out.req.user or None,
            endpoint=out.req.endpoint, n=out.req.n, prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens, queue_s=out.queue_s, ttft_s=ttft_s, latency_s=latency,
            finish_reason=finish, status=status, quality=out.quality, scores=out.scores, fallback=int(out.fallback),
            fallback_model=out.served.name if out.fallback else None, error=None, prompt=out.prompt_text,
            completion=completion, reference=out.req.reference, assigned_arm=r.assigned_arm,
            model_version=out.model_version)

    def record_error(self, req: GenRequest | None, err: APIError, t0: float, ts: float, user: str = "") -> None:
        """Metrics and the log row of a request answered with an error."""
        model = req.model if req is not None else ""
        known = self.pool.get(model) is not None or (self.router.experiment and model == self.router.experiment.name)
        self.metrics.failure.labels(model if known else "unknown", str(err.status)).inc()  # bounded label values
        if req is None:
            return
        r = getattr(err, "route", None) or Route(req.model)
        self.reqlog.request(id=req.id, ts=ts, experiment=r.experiment, arm=r.arm, assigned_arm=r.assigned_arm,
                            model=r.model, user=req.user or user or None, endpoint=req.endpoint,
                            n=req.n, latency_s=time.perf_counter() - t0, finish_reason="error", status=err.status,
                            fallback=0, error=err.message, reference=req.reference)


def _strip_stop(text: str, finish: str, stops: list[str]) -> str:
    """OpenAI semantics: the answer ends before the stop string (the engine's text includes it)."""
    if finish == "stop":
        for stop in stops:
            if text.endswith(stop):
                return text[: -len(stop)]
    return text


def _json(x) -> str:
    import json

    return json.dumps(x)
