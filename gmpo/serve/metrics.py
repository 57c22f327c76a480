"""Prometheus metrics of ``gmpo serve``, named like vLLM's with a ``gmpo:`` prefix, labelled by model and arm.

Each server has its own :class:`prometheus_client.CollectorRegistry` (several servers can live in one
process, e.g. in tests). Queue gauges are read from the scheduler at scrape time.

TTFT and inter-token latency, honestly: the engine returns a batch's completions when the batch ends (see
:mod:`gmpo.serve.scheduler`), so the first token reaches the client with the whole answer:
``time_to_first_token`` = arrival -> first byte sent (for a streamed answer, the first chunk), and
``inter_token_latency`` = the batch's decode wall time / its decode steps (the time one token of this
request took to compute, as the engine batched it).
"""
from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.4, 0.8, 1.6)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """The metric objects and a text exposition (``render``)."""

    def __init__(self, scheduler):
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
        from prometheus_client.core import GaugeMetricFamily

        disable_created_metrics()  # no *_created series: vLLM-like output
        self.registry = r = CollectorRegistry()
        ma = ["model", "arm"]
        self.prompt_tokens = Counter("gmpo:prompt_tokens", "Prompt tokens processed.", ma, registry=r)
        self.generation_tokens = Counter("gmpo:generation_tokens", "Generated tokens.", ma, registry=r)
        self.success = Counter("gmpo:request_success", "Finished requests by finish reason.",
                               ma + ["finished_reason"], registry=r)
        self.failure = Counter("gmpo:request_failure", "Requests answered with an error, by HTTP status.",
                               ["model", "status"], registry=r)
        self.fallback = Counter("gmpo:request_fallback", "Responses replaced by the fallback model.", ma, registry=r)
        self.ttft = Histogram("gmpo:time_to_first_token_seconds", "Arrival to the first byte of the answer.", ma,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("gmpo:inter_token_latency_seconds", "Decode time per token of the request's batch.",
                             ma, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("gmpo:e2e_request_latency_seconds", "End-to-end request latency.", ma,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("gmpo:request_queue_time_seconds", "Time waiting for a batch.", ma,
                               buckets=LATENCY_BUCKETS, registry=r)
        self.quality = Histogram("gmpo:request_quality", "Quality score of responses (0..1).", ma,
                                 buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=r)
        self.batch_rows = Histogram("gmpo:batch_size", "Rows (prompts x n) per engine generate call.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        sched = scheduler

        class _Queue:
            def collect(self):
                running = GaugeMetricFamily("gmpo:num_requests_running", "Requests in the running batch.",
                                            labels=["model"])
                waiting = GaugeMetricFamily("gmpo:num_requests_waiting", "Requests waiting for a batch.",
                                            labels=["model"])
                for model, k in dict(sched.running).items():
                    running.add_metric([model], k)
                for model, k in sched.waiting().items():
                    waiting.add_metric([model], k)
                yield running
                yield waiting

        r.register(_Queue())

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def observe(self, model: str, arm: str | None, *, prompt_tokens: int, completion_tokens: int,
                finish: list[str], queue_s: float, ttft_s: float, latency_s: float, itl_s: float,
                quality: float | None, fallback: bool) -> None:
        """Record one successful request."""
        labels = (model, arm or "none")
        self.prompt_tokens.labels(*labels).inc(prompt_tokens)
        self.generation_tokens.labels(*labels).inc(completion_tokens)
        for f in finish:
            self.success.labels(*labels, f).inc()
        self.queue.labels(*labels).observe(queue_s)
        self.ttft.labels(*labels).observe(ttft_s)
        self.e2e.labels(*labels).observe(latency_s)
        self.itl.labels(*labels).observe(itl_s)
        if quality is not None:
            self.quality.labels(*labels).observe(quality)
        if fallback:
            self.fallback.labels(*labels).inc()
