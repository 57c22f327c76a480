"""Running the app under uvicorn: the ``gmpo serve`` process, or a background thread (tests, benchmarks).

Shutdown (SIGTERM or Ctrl-C): uvicorn stops accepting connections and lets requests in flight finish
(up to ``drain_timeout_s``); then the app's lifespan closes the service: the scheduler finishes whatever
is still queued, the registry watcher stops, and the request log commits and closes. So every request
that was accepted is answered and logged, and the SQLite file is consistent.
"""
from __future__ import annotations

import socket
import threading


def _uvicorn_config(app, cfg, **kw):
    import uvicorn

    return uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=int(max(cfg.drain_timeout_s, 1)), lifespan="on", **kw)


def serve(cfg, pool=None) -> int:
    """Serve until SIGTERM/SIGINT (blocking); returns a process exit code."""
    import uvicorn

    from gmpo.serve.app import build_app
    from gmpo.serve.service import Service

    service = Service(cfg, pool)
    app = build_app(service)
    server = uvicorn.Server(_uvicorn_config(app, cfg))
    names = ", ".join(f"{n} ({service.pool.get(n).label})" for n in service.pool.names())
    exp = service.router.experiment
    print(f"gmpo serve: http://{cfg.host}:{cfg.port}/v1  models: {names}"
          + (f"  experiment: {exp.name} -> {exp.id}" if exp else "") + f"  log: {cfg.log_db}", flush=True)
    # uvicorn handles SIGTERM/SIGINT itself (graceful drain) and re-raises the signal once it is done; a
    # no-op handler here turns that re-raise into a normal return, so the process exits 0 after a drain.
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    print(f"gmpo serve: stopped; {service.reqlog.written} log rows written to {cfg.log_db}", flush=True)
    return 0


class ServerThread:
    """A server on 127.0.0.1 and a free port in a daemon thread: ``with ServerThread(cfg, pool) as s: s.url``.

    ``service`` gives tests the scheduler, router and log; leaving the block shuts down like SIGTERM does.
    """

    def __init__(self, cfg, pool=None):
        import uvicorn

        from gmpo.serve.app import build_app
        from gmpo.serve.service import Service

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((cfg.host, 0))
        cfg.port = self.sock.getsockname()[1]
        self.cfg = cfg
        self.service = Service(cfg, pool)
        self.server = uvicorn.Server(_uvicorn_config(build_app(self.service), cfg))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API (``http://127.0.0.1:PORT/v1``)."""
        return f"http://{self.cfg.host}:{self.cfg.port}/v1"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        """Start and wait until the server accepts connections."""
        import time

        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gmpo serve did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown (in-flight requests finish, the log is committed)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
