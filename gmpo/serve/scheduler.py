"""Batching over the rollout engine: a bounded queue and one worker thread that runs ``engine.generate``.

Why "next batch" and not "next step": :meth:`KVCacheEngine.generate` (gmpo/rollout/engine.py) takes all its
prompts up front, prefills them, and decodes until every row has finished; it has no way to admit a row
while it decodes (its cache is laid out for the prompts it was given, and it takes one SamplingParams for
the whole call). So a request that arrives while a batch decodes waits in the queue and joins the *next*
batch, together with everything else that arrived meanwhile. Its queue time is the rest of the running
batch (tests/test_serve_batching.py measures it). Rows that finish early leave the engine's decode batch,
so a short completion costs no decode steps after its end, but its response is sent when the whole
batch returns.

Batches are formed from requests that can share one ``generate`` call: the same model version, ``n``,
``max_tokens``, temperature, top-p/top-k and stop strings (greedy requests ignore top-p/top-k/seed, so all
greedy requests with the same length cap and stops batch together). A sampled request with an explicit
``seed`` runs in its own batch, so its completion depends only on its seed. Greedy output does not depend
on the batch (the engine's row computations are independent; tests check alone vs a batch of 32 in fp32).

When the worker becomes free it gathers arrivals before starting a batch, until ``max_batch_rows`` rows
wait or a cap after it became free (``10 x batch_wait_s`` or a tenth of the last batch's time, whichever
is longer: at most ~10% of throughput when clients do not come back): first until as many new requests have arrived
as the last batch answered (clients whose answers were just sent come back; without this, closed-loop
clients split into two groups that alternate, half-size batches forever: measured with 16 clients on a
busy machine, 8 rows per batch on average with a fixed 20 ms window), then while requests keep arriving
less than ``batch_wait_s`` apart. A lone request waits at most ``batch_wait_s`` (the queue was empty).
Past ``max_queue`` waiting requests, :meth:`Scheduler.submit` raises :class:`QueueFull` (the app answers 429).
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The waiting queue is at its bound."""


class Closing(Exception):
    """The server is shutting down and admits no new work."""


@dataclass
class Job:
    """One request's prompts for one model version, with its sampling parameters."""

    served: object  # gmpo.serve.models.ServedModel
    prompts: list[list[int]]
    params: object  # gmpo.rollout.SamplingParams
    arrival: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)
    id: int = field(default_factory=itertools.count().__next__)

    @property
    def rows(self) -> int:
        """Rows this job adds to a batch (prompts x n)."""
        return len(self.prompts) * self.params.n

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share one ``generate`` call."""
        p = self.params
        if p.temperature == 0:  # greedy: top-p/top-k/seed change nothing
            return (id(self.served), p.n, p.max_new_tokens, 0.0, 1.0, 0, tuple(p.stop), None)
        solo = ("solo", self.id) if p.seed is not None else None
        return (id(self.served), p.n, p.max_new_tokens, p.temperature, p.top_p, p.top_k, tuple(p.stop), solo)


@dataclass
class JobResult:
    """What a job's rows produced, in row order (prompt i, sample j -> i*n + j)."""

    texts: list[str]
    completion_ids: list[list[int]]
    finish: list[str]  # "stop" | "length"
    queue_s: float  # arrival -> batch start
    compute_s: float  # the batch's generate() wall time
    steps: int  # decode steps of the batch (its longest completion)
    batch_rows: int
    batch_id: int


@dataclass
class BatchRecord:
    """One ``generate`` call (kept for the last 1000 batches: tests and measurements read them)."""

    id: int
    model: str
    jobs: int
    rows: int
    start: float
    end: float


class Scheduler:
    """The bounded queue and the worker thread (see the module docstring)."""

    def __init__(self, max_queue: int = 256, max_batch_rows: int = 64, batch_wait_s: float = 0.02):
        self.max_queue, self.max_batch_rows, self.batch_wait_s = max_queue, max_batch_rows, batch_wait_s
        self._queue: list[Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self._held = False
        self._free_since = self._last_arrival = time.perf_counter()
        self._arrivals = self._arrivals_at_free = self._expect = 0  # for gathering returning clients
        self._last_batch_s = 0.0
        self.running: dict[str, int] = collections.Counter()  # model -> requests in the running batch
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=1000)
        self._batch_ids = itertools.count(1)
        self.on_batch = None  # called with each BatchRecord (the metrics' batch-size histogram)
        self._thread = threading.Thread(target=self._loop, name="gmpo-serve-worker", daemon=True)
        self._thread.start()

    # -- producer side ----------------------------------------------------------------------------

    def submit(self, job: Job) -> Future:
        """Queue a job; its future resolves to a :class:`JobResult`. Raises QueueFull / Closing."""
        with self._cond:
            if self._closing:
                raise Closing("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} requests waiting); retry later")
            self._queue.append(job)
            self._last_arrival = job.arrival
            self._arrivals += 1
            self._cond.notify_all()
        return job.future

    def waiting(self) -> dict[str, int]:
        """Model name -> requests waiting in the queue."""
        with self._cond:
            return dict(collections.Counter(j.served.name for j in self._queue))

    def hold(self) -> None:
        """Stop starting batches (queued jobs wait) until :meth:`release`: lets tests build exact batches."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        """Resume starting batches."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Admit nothing new, finish every queued job, stop the worker; True when it drained in time."""
        with self._cond:
            self._closing = True
            self._held = False
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- worker side ------------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        """Wait for work, gather a batch of same-key jobs (oldest first), remove and return it."""
        with self._cond:
            while True:
                if self._closing and not self._queue:
                    return None
                if not self._queue or self._held:
                    self._cond.wait()
                    continue
                key = self._queue[0].key
                start = max(self._free_since, self._queue[0].arrival)
                cap = self._free_since + max(10 * self.batch_wait_s, 0.1 * self._last_batch_s)
                if self._arrivals - self._arrivals_at_free < self._expect and start < cap:
                    deadline = cap  # the last batch's clients are not all back yet: wait for them, up to the cap
                else:  # gather while arrivals keep coming less than batch_wait_s apart, up to the cap
                    deadline = min(max(start, self._last_arrival) + self.batch_wait_s, max(cap, start + self.batch_wait_s))
                rows = sum(j.rows for j in self._queue if j.key == key)
                now = time.perf_counter()
                if rows >= self.max_batch_rows or now >= deadline or self._closing:
                    break
                self._cond.wait(deadline - now)
            batch, total = [], 0
            for j in self._queue:
                if j.key == key and (not batch or total + j.rows <= self.max_batch_rows):
                    batch.append(j)
                    total += j.rows
            ids = {id(j) for j in batch}
            self._queue = [j for j in self._queue if id(j) not in ids]
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            t0 = time.perf_counter()
            self._run(batch)
            with self._cond:
                self._free_since = time.perf_counter()
                self._last_batch_s = self._free_since - t0
                self._arrivals_at_free, self._expect = self._arrivals, len(batch)

    def _run(self, batch: list[Job]) -> None:
        """One ``generate`` call for a batch of same-key jobs; resolve each job's future."""
        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]  # drop jobs whose client went away
        if not batch:
            return
        served, params = batch[0].served, batch[0].params
        prompts = [p for j in batch for p in j.prompts]
        bid = next(self._batch_ids)
        with self._cond:
            self.running[served.name] += len(batch)
        t0 = time.perf_counter()
        try:
            out = served.engine.generate(prompts, params)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the worker goes on
            for j in batch:
                j.future.set_exception(e)
            return
        finally:
            t1 = time.perf_counter()
            with self._cond:
                self.running[served.name] -= len(batch)
            record = BatchRecord(bid, served.name, len(batch), len(prompts) * params.n, t0, t1)
            self.batches.append(record)
            if self.on_batch is not None:
                self.on_batch(record)
        lengths = out.lengths.tolist()
        ids = out.completion_ids.tolist()
        steps = max(lengths) if lengths else 0
        row = 0
        for j in batch:
            rows = range(row, row + j.rows)
            row += j.rows
            j.future.set_result(JobResult(
                texts=[out.texts[r] for r in rows],
                completion_ids=[ids[r][: lengths[r]] for r in rows],
                finish=["length" if bool(out.truncated[r]) else "stop" for r in rows],
                queue_s=t0 - j.arrival, compute_s=t1 - t0, steps=steps, batch_rows=len(prompts) * params.n,
                batch_id=bid))
