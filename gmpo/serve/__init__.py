"""``gmpo serve``: an OpenAI-compatible server for trained policies, on the rollout engine we train with.

Parts, each a module with one job (the web stack is imported only by :mod:`gmpo.serve.app` and
:mod:`gmpo.serve.server`, never at ``import gmpo`` time):

- :mod:`~gmpo.serve.config`: the server's settings (one dataclass; the CLI fills it);
- :mod:`~gmpo.serve.protocol`: OpenAI request validation and response / stream-chunk bodies;
- :mod:`~gmpo.serve.models`: the served models (paths, the default alias, ``registry:NAME@ALIAS`` with
  hot reload when the alias moves);
- :mod:`~gmpo.serve.scheduler`: the bounded queue and the batching worker over ``engine.generate``;
- :mod:`~gmpo.serve.router`: A/B experiments (sticky per-user arm assignment, frozen weights);
- :mod:`~gmpo.serve.quality`: response scorers, rolling per-arm quality, fallback and the circuit breaker;
- :mod:`~gmpo.serve.reqlog`: the SQLite request log (schema in CONTRACTS: requests, feedback, events,
  experiments);
- :mod:`~gmpo.serve.metrics`: Prometheus metrics named like vLLM's with a ``gmpo:`` prefix;
- :mod:`~gmpo.serve.app` / :mod:`~gmpo.serve.server`: the FastAPI routes and the uvicorn lifecycle
  (SIGTERM drains in-flight requests);
- :mod:`~gmpo.serve.abstats` / :mod:`~gmpo.serve.abreport`: ``gmpo ab report`` (reads the log read-only).
"""
