"""A real OpenAI-compatible chat server on 127.0.0.1 for the Constitutional-AI tests (no mocks).

Behaviour per request, decided from the last user message:
- the text contains "FAIL": HTTP 500;
- the text contains "SLOW" (or the server was built with ``sleep``): sleeps before answering;
- a pairwise judge question ("A or B"): answers "A" when only response A says "sorry", "B" when only B does,
  else "A" (a judge with a position bias);
- a Yes/No judge question: "Yes" when the response says "sorry", else "No"; with ``logprobs`` it returns
  top log-probs Yes=log(0.8), No=log(0.2) instead of deciding (servers built with ``logprobs=True``);
- anything else: "reply N: <first 20 characters of the message>" (N counts requests).
"""
from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    """Start with ``with ChatServer() as s:``; ``s.url`` is the base URL, ``s.requests`` the bodies seen."""

    def __init__(self, sleep: float = 0.0, status: int = 200, logprobs: bool = False):
        self.sleep, self.status, self.requests, self.lock = sleep, status, [], threading.Lock()
        self.logprobs = logprobs
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                try:
                    self._post()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def _post(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    n = len(outer.requests)
                text = body["messages"][-1]["content"]
                if outer.sleep or "SLOW" in text:
                    time.sleep(outer.sleep or 2.0)
                if outer.status != 200 or "FAIL" in text:
                    self.send_response(outer.status if outer.status != 200 else 500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "judge exploded"}')
                    return
                choice = outer.answer(text, body, n, outer.logprobs)
                data = json.dumps({"id": f"r{n}", "object": "chat.completion", "choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @staticmethod
    def answer(text: str, body: dict, n: int, logprobs: bool) -> dict:
        """The choice object for one request."""
        msg = lambda c: {"index": 0, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}  # noqa: E731
        if "A or B" in text:
            a = text.split("Response A:", 1)[1].split("Response B:", 1)[0]
            b = text.split("Response B:", 1)[1].split("Question:", 1)[0]
            return msg("B" if ("sorry" in b and "sorry" not in a) else "A")
        if "Yes or No" in text:
            if logprobs and body.get("logprobs"):
                tops = [{"token": "Yes", "logprob": math.log(0.8)}, {"token": "No", "logprob": math.log(0.2)}]
                return {**msg("Yes"), "logprobs": {"content": [{"token": "Yes", "logprob": math.log(0.8),
                                                                "top_logprobs": tops}]}}
            resp = text.split("Assistant:", 1)[1].split("Question:", 1)[0]
            return msg("Yes" if "sorry" in resp else "No")
        if "1 to 10" in text:
            return msg("I would say 7.")
        return msg(f"reply {n}: {text[:20]}")

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
