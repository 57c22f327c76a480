"""The served models: each loaded once, with its rollout engine and prompt encoder; registry aliases followed.

A model source is a local HF directory, a hub name, the packaged default alias, or
``registry:NAME@ALIAS``. A registry source is resolved through the model registry
(:class:`gmpo.runs.model_registry.ModelRegistry`, CONTRACTS "model registry"), and a watcher thread polls
``alias_version(name, alias)`` every ``reload_interval_s``: when the alias moves (a promotion or a
rollback), the new version is loaded in the background and swapped in atomically. Requests already
admitted keep the :class:`ServedModel` they were encoded for (they finish on the old weights); requests
that arrive after the swap use the new one. Nothing is dropped, so a reload never fails a request.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("gmpo.serve")

REGISTRY_PREFIX = "registry:"


@dataclass
class ServedModel:
    """One loaded model version: weights, tokenizer, engine and prompt encoder."""

    name: str
    source: str
    path: str
    version: int | None  # registry version (None for plain paths)
    model: object
    tokenizer: object
    engine: object
    encoder: object  # gmpo.data.prompts.PromptEncoder
    max_positions: int | None

    @property
    def label(self) -> str:
        """What the request log records as the model version: ``path`` or ``registry ref vN``."""
        return f"{self.source} v{self.version}" if self.version is not None else self.path


def parse_registry_ref(source: str) -> tuple[str, str]:
    """``registry:NAME@ALIAS`` -> (NAME, ALIAS); a bare ``registry:NAME`` follows ``production``."""
    ref = source[len(REGISTRY_PREFIX):]
    name, _, alias = ref.partition("@")
    if not name:
        raise ValueError(f"model source {source!r}: expected registry:NAME@ALIAS")
    return name, alias or "production"


_REGISTRIES: dict[str, object] = {}
_REG_LOCK = threading.Lock()


def _registry(path: str):
    """The process's :class:`ModelRegistry` for ``path`` ("" = $GMPO_REGISTRY or the default), opened once."""
    try:
        from gmpo.runs.model_registry import ModelRegistry
    except ImportError as e:  # the registry is another part: say so instead of a bare ImportError
        raise ValueError(f"registry model sources need gmpo.runs.model_registry, which is not available: {e}") from None
    with _REG_LOCK:
        if path not in _REGISTRIES:
            _REGISTRIES[path] = ModelRegistry(path or None)
        return _REGISTRIES[path]


def resolve_source(source: str, registry_path: str = "") -> tuple[str, int | None]:
    """(loadable path or name, registry version or None) of a model source; a registered version whose
    files are damaged is an error (checked cheaply: files present, sizes as registered)."""
    if source.startswith(REGISTRY_PREFIX):
        name, alias = parse_registry_ref(source)
        reg = _registry(registry_path)
        mv = reg.resolve(f"{name}@{alias}")
        problems = reg.verify(mv, deep=False) if hasattr(reg, "verify") else []
        if problems:
            raise ValueError(f"{source} -> {name} v{mv.version}: the registered files are damaged: {'; '.join(problems)}")
        return str(mv.path), int(mv.version)
    return source, None


def load_served(name: str, source: str, cfg) -> ServedModel:
    """Load one model version (weights, tokenizer, engine, encoder) for ``cfg`` (a ServeConfig)."""
    from gmpo.models import load_model

    path, version = resolve_source(source, cfg.registry)
    model, tokenizer = load_model(path, dtype=cfg.dtype)
    return served_from(name, model, tokenizer, cfg, source=source, path=str(path), version=version)


def served_from(name: str, model, tokenizer, cfg, *, source: str = "", path: str = "", version: int | None = None):
    """Wrap an in-memory model and tokenizer as a :class:`ServedModel` (engine and prompt encoder built here)."""
    from gmpo.data.prompts import PromptEncoder
    from gmpo.rollout import make_engine

    model.eval()
    engine = make_engine("engine", model, tokenizer, bf16=cfg.bf16, decode_batch_size=max(cfg.max_batch_rows, 1))
    template = cfg.template if getattr(tokenizer, "chat_template", None) or cfg.template != "chat" else "plain"
    encoder = PromptEncoder(tokenizer, template=template, system_prompt=cfg.system_prompt,
                            max_prompt_tokens=cfg.max_prompt_tokens)
    conf = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return ServedModel(name, source or name, path or f"<in-memory {name}>", version, model, tokenizer, engine, encoder,
                       getattr(conf, "max_position_embeddings", None))


class ModelPool:
    """Name -> current :class:`ServedModel`; follows registry aliases when ``start_watcher`` runs.

    ``on_reload(name, old, new)`` is called after each swap (the app logs a ``model_reload`` event).
    """

    def __init__(self, cfg, on_reload=None):
        self.cfg = cfg
        self.on_reload = on_reload
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.reload_errors = 0

    def load_all(self) -> None:
        """Load every configured model (each once)."""
        for spec in self.cfg.models:
            t0 = time.perf_counter()
            served = load_served(spec.name, spec.source, self.cfg)
            with self._lock:
                self._models[spec.name] = served
            log.info("loaded model %s from %s in %.1fs", spec.name, served.label, time.perf_counter() - t0)

    def add(self, served: ServedModel) -> None:
        """Register an already loaded model (tests, embedding)."""
        with self._lock:
            self._models[served.name] = served

    def get(self, name: str) -> ServedModel | None:
        """The current version of model ``name`` (None when not served)."""
        with self._lock:
            return self._models.get(name)

    def names(self) -> list[str]:
        """Served model names in configuration order."""
        with self._lock:
            return list(self._models)

    # -- hot reload -------------------------------------------------------------------------------

    def check_once(self) -> list[str]:
        """Poll every registry-backed model's alias once; reload the ones that moved. Returns their names."""
        moved = []
        for spec in self.cfg.models:
            if not spec.source.startswith(REGISTRY_PREFIX):
                continue
            current = self.get(spec.name)
            try:
                reg_name, alias = parse_registry_ref(spec.source)
                version = _registry(self.cfg.registry).alias_version(reg_name, alias)
                if version is None or (current is not None and current.version == int(version)):
                    continue
                new = load_served(spec.name, spec.source, self.cfg)
            except Exception as e:  # noqa: BLE001 - a bad registry state must not take the server down
                self.reload_errors += 1
                log.warning("could not follow %s: %s (still serving %s)", spec.source, e,
                            current.label if current else "nothing")
                continue
            with self._lock:
                self._models[spec.name] = new
            self.reloads += 1
            moved.append(spec.name)
            log.info("model %s: %s -> %s", spec.name, current.label if current else "-", new.label)
            if self.on_reload is not None:
                self.on_reload(spec.name, current, new)
        return moved

    def start_watcher(self) -> None:
        """Poll registry aliases every ``reload_interval_s`` in a daemon thread (no-op without registry models)."""
        if self._thread is not None or not any(s.source.startswith(REGISTRY_PREFIX) for s in self.cfg.models):
            return

        def loop():
            while not self._stop.wait(self.cfg.reload_interval_s):
                self.check_once()

        self._thread = threading.Thread(target=loop, name="gmpo-serve-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
