"""AI judges that apply a constitution: a local Hugging Face model or an OpenAI-compatible endpoint.

A judge answers two kinds of query, both cached by their full text (prompt, completion(s), question):

- pointwise: "does this response satisfy QUESTION?" -> a score in [0, 1]: with ``score="yesno"`` the
  judge's probability of "Yes" normalised over Yes/No (a local model: the next-token distribution after
  the question; an endpoint: its top log-probs when it returns them, else the parsed word as 1 or 0); with
  ``score="scale"`` a 1-10 rating parsed from the judge's (greedy) answer, mapped to (s - 1) / 9
  (Bai et al. 2022 use the normalised probability of the preferred option as the AI-feedback label).
- pairwise: "which of responses A and B better satisfies QUESTION?" -> P(A) normalised over A/B.

Local batches are built from the distinct uncached queries sorted by their text, so a query's score never
depends on the order (or the company) it came in. Failures raise :class:`JudgeError` naming the query
(an unparseable verdict, an endpoint error or timeout); the reward-error policy decides what happens next.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

POINTWISE = ("Read the conversation below, then answer the question about the assistant's response with "
             "Yes or No.\n\nUser: {prompt}\n\nAssistant: {completion}\n\nQuestion: {question}\nAnswer Yes or No.")
SCALE = ("Read the conversation below, then rate the assistant's response from 1 (not at all) to 10 (fully) on "
         "this question: {question}\n\nUser: {prompt}\n\nAssistant: {completion}\n\nAnswer with one number from 1 to 10.")
PAIRWISE = ("Read the request and the two responses below, then answer which response better satisfies the "
            "question, with A or B.\n\nUser: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
            "Question: {question}\nWhich response is better, A or B?")
WORDS = {"yesno": (("Yes", " Yes", "yes", " yes", "YES"), ("No", " No", "no", " no", "NO")),
         "ab": (("A", " A"), ("B", " B"))}


class JudgeError(RuntimeError):
    """A judge query failed; ``index`` is the query's position in the call (None when unknown)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + " [...]"


def parse_scale(text: str) -> float:
    """A 1-10 rating in `text` mapped to [0, 1]; ValueError when there is none."""
    m = re.search(r"(?<!\d)(10|[1-9])(?!\d)", text)
    if m is None:
        raise ValueError(f"no 1-10 rating in the judge's answer {text[:60]!r}")
    return (int(m.group(1)) - 1) / 9.0


def parse_word(text: str, kind: str) -> float:
    """1.0 / 0.0 for a Yes/No (kind 'yesno') or A/B (kind 'ab') answer; ValueError otherwise."""
    pos, neg = WORDS[kind]
    head = text.strip().strip("*\"'.:").split()
    word = head[0].strip(".,:!*\"'") if head else ""
    if word in {w.strip() for w in pos}:
        return 1.0
    if word in {w.strip() for w in neg}:
        return 0.0
    raise ValueError(f"unparseable verdict {text[:60]!r} (expected {pos[0]} or {neg[0]})")


class Judge:
    """Query building and the cache shared by every backend; subclasses implement :meth:`_run`."""

    def __init__(self, max_chars: int = 1500, cache_size: int = 100_000):
        self.max_chars, self.cache_size = int(max_chars), int(cache_size)
        self.cache: OrderedDict = OrderedDict()
        self.calls = 0  # queries actually sent to the model / endpoint (cache misses)

    def clear_cache(self) -> None:
        """Forget every cached verdict."""
        self.cache.clear()

    def pointwise(self, prompts: list[str], completions: list[str], question: str, score: str = "yesno") -> list[float]:
        """One score in [0, 1] per (prompt, completion) for the yes/no `question` (see the module docstring)."""
        template = SCALE if score == "scale" else POINTWISE
        texts = [template.format(prompt=_cut(p, self.max_chars), completion=_cut(c, self.max_chars), question=question)
                 for p, c in zip(prompts, completions)]
        return self._cached(texts, "scale" if score == "scale" else "yesno")

    def prefer(self, triples: list[tuple[str, str, str]], question: str) -> list[float]:
        """P(A better than B) for each (prompt, A, B)."""
        texts = [PAIRWISE.format(prompt=_cut(p, self.max_chars), a=_cut(a, self.max_chars), b=_cut(b, self.max_chars),
                                 question=question) for p, a, b in triples]
        return self._cached(texts, "ab")

    def _cached(self, texts: list[str], kind: str) -> list[float]:
        todo = sorted({t for t in texts if (kind, t) not in self.cache})  # canonical order: order-invariant
        if todo:
            self.calls += len(todo)
            failed: JudgeError | None = None
            for i, (t, s) in enumerate(zip(todo, self._run(todo, kind))):
                if isinstance(s, JudgeError):  # successes are cached even when another query failed
                    if failed is None:
                        failed = JudgeError(f"judge query {texts.index(t)}: {s}", texts.index(t))
                    continue
                self.cache[(kind, t)] = s
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            if failed is not None:  # named by the caller's position, not the sorted batch's
                raise failed
        return [self.cache[(kind, t)] for t in texts]

    def _run(self, texts: list[str], kind: str) -> list:  # pragma: no cover - abstract
        """One score per text, or a :class:`JudgeError` in place of a failed query."""
        raise NotImplementedError


class LocalJudge(Judge):
    """A local causal LM as the judge (batched forward passes under no_grad)."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_chars: int = 1500):
        super().__init__(max_chars)
        from gmpo.data.prompts import PromptEncoder

        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, max(1, int(batch_size))
        self.encoder = PromptEncoder(tokenizer, "chat")
        self.ids = {k: self._word_ids(*v) for k, v in WORDS.items()}
        self.engine = None

    def _word_ids(self, pos: tuple, neg: tuple) -> tuple[list[int], list[int]]:
        """First-token ids of the positive and negative words (tokens shared by both sides dropped)."""
        first = lambda ws: {self.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ws}  # noqa: E731
        p, n = first(pos), first(neg)
        p, n = sorted(p - n), sorted(n - p)
        if not p or not n:
            raise ValueError(f"the judge tokenizer cannot tell {pos[0]!r} from {neg[0]!r} by their first token")
        return p, n

    def _run(self, texts: list[str], kind: str) -> list:
        ids = [self.encoder.encode_messages([{"role": "user", "content": t}])[1] for t in texts]
        if kind == "scale":
            return self._scale(ids)
        pos, neg = self.ids[kind]
        out: list[float] = []
        for s in range(0, len(ids), self.batch_size):
            out.extend(self._prob(ids[s:s + self.batch_size], pos, neg))
        return out

    def _prob(self, batch: list[list[int]], pos: list[int], neg: list[int]) -> list[float]:
        """P(positive word) normalised over positive and negative words at the next token (left-padded batch)."""
        import torch

        dev = next(self.model.parameters()).device
        T = max(len(x) for x in batch)
        pad = self.tokenizer.pad_token_id or 0
        inp = torch.tensor([[pad] * (T - len(x)) + x for x in batch], device=dev)  # (B, T)
        mask = torch.tensor([[0] * (T - len(x)) + [1] * len(x) for x in batch], device=dev)  # (B, T)
        pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): positions restart after the left padding
        import inspect

        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        with torch.no_grad():  # the lm_head runs on the last position only where the model allows it
            logits = self.model(input_ids=inp, attention_mask=mask, position_ids=pos_ids, **keep).logits[:, -1].float()  # (B, V)
        lp = torch.log_softmax(logits, -1)
        diff = torch.logsumexp(lp[:, pos], -1) - torch.logsumexp(lp[:, neg], -1)  # (B,) log P(pos) - log P(neg)
        return torch.sigmoid(diff).tolist()  # P(pos) / (P(pos) + P(neg))

    def _scale(self, ids: list[list[int]]) -> list[float]:
        from gmpo.rollout import SamplingParams, make_engine

        if self.engine is None:
            self.engine = make_engine("engine", self.model, self.tokenizer, decode_batch_size=self.batch_size)
        texts = self.engine.generate(ids, SamplingParams(n=1, max_new_tokens=6, temperature=0.0)).texts
        out: list = []
        for i, t in enumerate(texts):
            try:
                out.append(parse_scale(t))
            except ValueError as e:
                out.append(JudgeError(str(e), i))
        return out


class EndpointJudge(Judge):
    """An OpenAI-compatible chat endpoint as the judge (concurrent requests, per-request timeout)."""

    def __init__(self, client, max_chars: int = 1500):
        super().__init__(max_chars)
        self.client = client

    def _run(self, texts: list[str], kind: str) -> list:
        from gmpo.cai.client import EndpointError

        def one(i, text):
            try:
                choice = self.client.request(i, [{"role": "user", "content": text}], 8 if kind == "scale" else 1,
                                             0.0, None, 0 if kind == "scale" else 5)
            except EndpointError as e:
                return JudgeError(str(e), i)
            content = str((choice.get("message") or {}).get("content") or "")
            try:
                if kind == "scale":
                    return parse_scale(content)
                p = _top_logprob_verdict(choice, kind)
                return p if p is not None else parse_word(content, kind)
            except ValueError as e:
                return JudgeError(str(e), i)

        return self.client.map(one, texts)


def _top_logprob_verdict(choice: dict, kind: str) -> float | None:
    """P(positive) from the first token's top log-probs (None when the endpoint sent none or none match)."""
    try:
        tops = choice["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    pos, neg = ({w.strip() for w in ws} for ws in WORDS[kind])
    p = sum(math.exp(t["logprob"]) for t in tops if t.get("token", "").strip() in pos)
    n = sum(math.exp(t["logprob"]) for t in tops if t.get("token", "").strip() in neg)
    return p / (p + n) if p + n > 0 else None


__all__ = ["EndpointJudge", "Judge", "JudgeError", "LocalJudge", "parse_scale", "parse_word"]
