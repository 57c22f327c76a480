"""Serve trained policies behind the OpenAI API (chat and text completions, streaming), batched on gmpo's
rollout engine, with A/B experiments, quality monitoring, fallback, a request log and Prometheus metrics.

examples:
  gmpo serve                                              # the default model as "smollm2-135m-instruct"
  gmpo serve --model policy=runs/gmpo/checkpoints/step_000200 --model base=smollm2-135m-instruct
  gmpo serve --model prod=registry:math@production         # follows the alias (hot reload on promotion)
  gmpo serve --model base=smollm2-135m-instruct --model cand=runs/x/ckpt \\
      --experiment ab.yaml --breaker-threshold 0.5 --fallback-model base --fallback-threshold 0.3
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "base", "messages": [{"role": "user", "content": "What is 2+3?"}], "max_tokens": 32}'

The experiment file (YAML): name (what clients send as model), control, arms [{name, model, weight}].
Requests are logged to --log-db (SQLite); `gmpo ab report --db gmpo_requests.db` analyses an experiment.
Binds 127.0.0.1 by default; a non-loopback --host needs --api-key (or GMPO_API_KEY), and with a key every
route but /health (including /metrics) needs 'Authorization: Bearer KEY'.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo serve`."""
    from gmpo.serve.config import DEFAULT_SCORERS, ServeConfig

    d = ServeConfig()
    p.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                   help="a model to serve, repeatable: SOURCE is a local HF directory, a hub name, the default alias "
                        "smollm2-135m-instruct, or registry:NAME@ALIAS (followed: reloaded when the alias moves); "
                        "default: smollm2-135m-instruct")
    p.add_argument("--host", default=d.host, help="bind address (default %(default)s; others need --api-key)")
    p.add_argument("--port", type=int, default=d.port, help="port (default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("GMPO_API_KEY", ""),
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $GMPO_API_KEY)")
    g = p.add_argument_group("generation and batching")
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast in the engine's forward")
    g.add_argument("--template", default=d.template,
                   help="chat prompt template of /v1/chat/completions: chat (the tokenizer's) or qwen_math")
    g.add_argument("--system-prompt", default="", help="system message added when a chat request has none")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="waiting requests before new ones get 429 (default %(default)s)")
    g.add_argument("--max-batch-rows", type=int, default=d.max_batch_rows,
                   help="rows (prompts x n) per engine batch (default %(default)s)")
    g.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_s * 1000,
                   help="how long a free worker gathers arrivals before a batch starts (default %(default)s)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    lim = p.add_argument_group("limits (bad input gets a 400 saying what is wrong)")
    lim.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens, help="default %(default)s")
    lim.add_argument("--max-tokens-limit", type=int, default=d.max_tokens_limit,
                     help="largest max_tokens a request may ask for (default %(default)s)")
    lim.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                     help="max_tokens when a request gives none (default %(default)s)")
    lim.add_argument("--max-n", type=int, default=d.max_n, help="largest n (default %(default)s)")
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                     help="largest request body; larger gets 413 (default %(default)s)")
    q = p.add_argument_group("A/B experiments, quality, fallback")
    q.add_argument("--experiment", default="", help="experiment YAML: name, control, arms [{name, model, weight}]")
    q.add_argument("--scorer", action="append", default=None,
                   help=f"reference-free scorer, repeatable: nonempty, not_truncated, repetition, boxed, or any reward "
                        f"function name / module:function (default: {', '.join(DEFAULT_SCORERS)})")
    q.add_argument("--reward", action="append", default=[],
                   help="reward function scored when a request carries metadata.reference (e.g. math_answer), "
                        "repeatable")
    q.add_argument("--fallback-model", default="", help="served model that answers when a response scores low")
    q.add_argument("--fallback-threshold", type=float, default=0.0,
                   help="quality below this -> regenerate with --fallback-model and mark the response (0 = off)")
    q.add_argument("--breaker-threshold", type=float, default=0.0,
                   help="an arm whose rolling quality falls below this gets no traffic (goes to control) and an "
                        "alert fires (0 = off)")
    q.add_argument("--breaker-window", type=int, default=d.breaker_window, help="rolling window (default %(default)s)")
    q.add_argument("--breaker-min-requests", type=int, default=d.breaker_min_requests,
                   help="responses in the window before the breaker may open (default %(default)s)")
    q.add_argument("--breaker-cooldown-s", type=float, default=d.breaker_cooldown_s,
                   help="seconds before an open breaker lets traffic back (default %(default)s)")
    o = p.add_argument_group("logs, alerts, registry, shutdown")
    o.add_argument("--log-db", default=d.log_db, help="SQLite request log (default %(default)s)")
    o.add_argument("--alerts", default="", help="alerts.jsonl path (default: beside --log-db)")
    o.add_argument("--webhook", default="", help="URL that receives breaker alerts as JSON POSTs")
    o.add_argument("--registry", default="", help="model registry database (default $GMPO_REGISTRY or "
                                                  "~/.cache/gmpo/registry.db)")
    o.add_argument("--reload-interval", type=float, default=d.reload_interval_s,
                   help="seconds between registry alias polls (default %(default)s)")
    o.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s,
                   help="seconds SIGTERM waits for requests in flight (default %(default)s)")


def config_from_args(args):
    """A :class:`gmpo.serve.config.ServeConfig` from parsed options (raises ValueError on bad values)."""
    from gmpo.serve.config import DEFAULT_SCORERS, ModelSpec, ServeConfig

    models = [ModelSpec.parse(m) for m in (args.model or ["smollm2-135m-instruct"])]
    return ServeConfig(
        models=models, host=args.host, port=args.port, api_key=args.api_key, dtype=args.dtype, bf16=args.bf16,
        template=args.template, system_prompt=args.system_prompt, max_queue=args.max_queue,
        max_batch_rows=args.max_batch_rows, batch_wait_s=args.batch_wait_ms / 1000.0,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens, max_n=args.max_n, max_body_bytes=args.max_body_bytes,
        experiment=args.experiment, scorers=list(args.scorer) if args.scorer else list(DEFAULT_SCORERS),
        rewards=list(args.reward), fallback_model=args.fallback_model, fallback_threshold=args.fallback_threshold,
        breaker_threshold=args.breaker_threshold, breaker_window=args.breaker_window,
        breaker_min_requests=args.breaker_min_requests, breaker_cooldown_s=args.breaker_cooldown_s,
        log_db=args.log_db, alerts_path=args.alerts, webhook_url=args.webhook, registry=args.registry,
        reload_interval_s=args.reload_interval, drain_timeout_s=args.drain_timeout)


def run(args) -> int:
    """Start the server; blocks until SIGTERM / Ctrl-C."""
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as e:
        print(f"gmpo serve: {e}", file=sys.stderr)
        return 2
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    from gmpo.serve.server import serve

    try:
        return serve(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"gmpo serve: {e}", file=sys.stderr)
        return 2
