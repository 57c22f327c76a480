"""Chat generation for Constitutional-AI stages: our rollout engine in-process, or an OpenAI-compatible endpoint.

Both clients answer ``chat(conversations, max_new_tokens, temperature, seed) -> list[str]``: one assistant
reply per conversation (a list of ``{"role", "content"}`` messages), all conversations of a call batched
together (one engine call, or concurrent HTTP requests).

- :class:`EngineClient`: conversations are encoded by :class:`gmpo.data.prompts.PromptEncoder`
  (``encode_messages``: the tokenizer's chat template, as in training and serving) and sampled by
  :mod:`gmpo.rollout` in one ``generate`` call.
- :class:`EndpointClient`: ``POST {url}/chat/completions`` (``/v1`` is appended to a bare host URL) with
  ``httpx``, a per-request timeout, at most ``concurrency`` requests in flight, and one retry of a failed
  request; works with ``gmpo serve``, vLLM, or a hosted API (key from ``$OPENAI_API_KEY`` or ``api_key``).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


class EndpointError(RuntimeError):
    """An endpoint request failed (HTTP error, timeout, malformed answer); ``index`` names the request."""

    def __init__(self, message: str, index: int | None = None, timeout: bool = False):
        super().__init__(message)
        self.index, self.timeout = index, timeout


class EngineClient:
    """Chat replies from an in-process model through gmpo's rollout engine (all conversations in one batch)."""

    def __init__(self, model, tokenizer, system_prompt: str = "", decode_batch_size: int = 64,
                 stop: list[str] | None = None, backend: str = "engine", bf16: bool = False):
        from gmpo.data.prompts import PromptEncoder
        from gmpo.rollout import make_engine

        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, "chat", system_prompt)
        self.engine = make_engine(backend, model, tokenizer, bf16=bf16, decode_batch_size=decode_batch_size)
        self.stop = list(stop or [])

    def chat(self, conversations: list[list[dict]], max_new_tokens: int = 128, temperature: float = 0.7,
             seed: int = 0) -> list[str]:
        """One sampled reply per conversation (temperature 0 = greedy), stripped of surrounding whitespace."""
        from gmpo.rollout import SamplingParams

        if not conversations:
            return []
        ids = [self.encoder.encode_messages(conv, add_generation_prompt=True)[1] for conv in conversations]
        params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=temperature, stop=self.stop,
                                seed=seed)
        return [t.strip() for t in self.engine.generate(ids, params).texts]


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class EndpointClient:
    """Chat replies from an OpenAI-compatible ``/v1/chat/completions`` endpoint (concurrent, with timeouts)."""

    def __init__(self, url: str, model: str = "", api_key: str = "", timeout: float = 60.0, concurrency: int = 8,
                 retries: int = 1):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {url!r}")
        self.url, self.model, self.timeout = _v1(url) + "/chat/completions", model or "default", float(timeout)
        self.concurrency, self.retries = max(1, int(concurrency)), max(0, int(retries))
        key = api_key or os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=headers)

    def request(self, index: int, messages: list[dict], max_tokens: int, temperature: float, seed: int | None = None,
                top_logprobs: int = 0) -> dict:
        """One chat completion; returns ``choices[0]`` (EndpointError naming `index` on failure)."""
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        if top_logprobs:
            body.update(logprobs=True, top_logprobs=top_logprobs)
        err: EndpointError | None = None
        for _ in range(1 + self.retries):
            try:
                r = self.http.post(self.url, json=body)
            except httpx.TimeoutException:
                err = EndpointError(f"{self.url}: request {index} timed out after {self.timeout:g} s", index, True)
                continue
            except httpx.HTTPError as e:
                err = EndpointError(f"{self.url}: request {index} failed: {type(e).__name__}: {e}", index)
                continue
            if r.status_code != 200:
                err = EndpointError(f"{self.url}: request {index}: HTTP {r.status_code}: {r.text[:200]}", index)
                continue
            try:
                return r.json()["choices"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                err = EndpointError(f"{self.url}: request {index}: no choices in the answer: {r.text[:200]}", index)
        raise err

    def map(self, fn, items: list) -> list:
        """``[fn(i, item)]`` with at most ``concurrency`` in flight; the first failure (lowest index) raises."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(i, x) for i, x in enumerate(items)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            futures = [pool.submit(fn, i, x) for i, x in enumerate(items)]
            return [f.result() for f in futures]

    def chat(self, conversations: list[list[dict]], max_new_tokens: int = 128, temperature: float = 0.7,
             seed: int = 0) -> list[str]:
        """One reply per conversation (requests run concurrently)."""
        def one(i, conv):
            choice = self.request(i, conv, max_new_tokens, temperature, seed + i)
            return str((choice.get("message") or {}).get("content") or choice.get("text") or "").strip()

        return self.map(one, conversations)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()


__all__ = ["EndpointClient", "EndpointError", "EngineClient"]
