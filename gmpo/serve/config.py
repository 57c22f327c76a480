"""Settings of ``gmpo serve``: one dataclass, filled by the CLI (:mod:`gmpo.commands.serve`) or by tests.

Every field has a safe default: loopback bind, a bounded queue, limits on prompt length, ``max_tokens``,
``n`` and the request body.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

LOOPBACK_NAMES = ("localhost",)
DEFAULT_SCORERS = ("nonempty", "not_truncated", "repetition")


@dataclass
class ModelSpec:
    """One served model: the name clients send as ``model`` and where it comes from.

    ``source``: a local HF directory, a hub name, the packaged alias ``smollm2-135m-instruct``, or
    ``registry:NAME@ALIAS`` (followed: the server reloads when the alias moves).
    """

    name: str
    source: str

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """Parse ``NAME=SOURCE`` (or a bare SOURCE, named after its last path component)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("--model needs NAME=PATH (or a path / model alias), got an empty value")
        if "=" in text:
            name, _, source = text.partition("=")
            name, source = name.strip(), source.strip()
            if not name or not source:
                raise ValueError(f"--model {text!r}: expected NAME=PATH with both parts non-empty")
        else:
            source = text.strip()
            name = source.rstrip("/").split("/")[-1].split("@")[0].removeprefix("registry:")
        if any(c.isspace() for c in name):
            raise ValueError(f"--model {text!r}: the model name {name!r} must not contain spaces")
        return cls(name, source)


@dataclass
class ServeConfig:
    """Everything the server needs (see ``gmpo serve --help`` for each option)."""

    models: list[ModelSpec] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""
    # generation
    dtype: str = "float32"
    bf16: bool = False
    template: str = "chat"
    system_prompt: str = ""
    # batching and limits
    max_queue: int = 256  # waiting requests; past it: 429
    max_batch_rows: int = 64  # rows (prompts x n) in one engine.generate call
    batch_wait_s: float = 0.02  # how long a free worker gathers arrivals before starting a batch
    max_prompt_tokens: int = 2048
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    max_n: int = 8
    max_body_bytes: int = 1_000_000
    # A/B, quality, fallback, breaker
    experiment: str = ""  # YAML file
    scorers: list[str] = field(default_factory=lambda: list(DEFAULT_SCORERS))
    rewards: list[str] = field(default_factory=list)  # reward functions run when a request has a reference
    fallback_model: str = ""
    fallback_threshold: float = 0.0  # quality below this -> regenerate with the fallback model (0 = off)
    breaker_threshold: float = 0.0  # rolling arm quality below this -> arm off, traffic to control (0 = off)
    breaker_window: int = 50
    breaker_min_requests: int = 20
    breaker_cooldown_s: float = 300.0
    # outputs
    log_db: str = "gmpo_requests.db"
    alerts_path: str = ""  # default: alerts.jsonl beside the log database
    webhook_url: str = ""
    # registry following
    registry: str = ""
    reload_interval_s: float = 5.0
    drain_timeout_s: float = 30.0

    def validate(self) -> None:
        """Raise ValueError with a clear message for an unsafe or inconsistent configuration."""
        if not self.models:
            raise ValueError("no model to serve: give --model NAME=PATH at least once")
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model names must be unique; repeated: {', '.join(sorted(dup))}")
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"refusing to bind {self.host}: a non-loopback address needs --api-key (or GMPO_API_KEY); "
                             "without a key anyone who can reach the port could use the models")
        for name, lo in (("max_queue", 1), ("max_batch_rows", 1), ("max_prompt_tokens", 1), ("max_tokens_limit", 1),
                         ("max_n", 1), ("max_body_bytes", 256), ("breaker_window", 1), ("breaker_min_requests", 1)):
            if int(getattr(self, name)) < lo:
                raise ValueError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError(f"default_max_tokens={self.default_max_tokens} must be in [1, max_tokens_limit="
                             f"{self.max_tokens_limit}]")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")
        for name in ("fallback_threshold", "breaker_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.fallback_threshold > 0 and not self.fallback_model:
            raise ValueError("fallback_threshold is set but no --fallback-model names the model to fall back to")
        if self.fallback_model and self.fallback_model not in names:
            raise ValueError(f"--fallback-model {self.fallback_model!r} is not a served model ({', '.join(names)})")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
