"""Constitutions as data: principles (a critique request, a revision request, a yes/no judge question each)
and optional few-shot conversations.

Two file formats load into one :class:`Constitution`:

- ours (YAML or JSON; see ``gmpo/cai/constitutions/default.yaml``)::

      name: my-constitution
      judge: Is the response harmless, honest and helpful?      # the judge's overall yes/no question
      principles:
        - {name: harmless, critique: "...", revision: "...", judge: "..."}   # judge optional
      examples:                                                 # optional few-shot critique -> revision
        - {prompt: "...", response: "...", critique: "...", revision: "...", principle: harmless}

- Hugging Face's constitutional-ai recipe (llm-swarm ``examples/constitutional-ai``)::

      {"constitutions": [{"critic": "...", "revision": "..."}, ...],
       "system_chat": [[{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...], ...]}

  where each ``system_chat`` entry is a whole few-shot conversation (request, answer, critique request,
  critique, revision request, revision).

Principles are drawn with :meth:`Constitution.draw`: a pure function of (seed, prompt id, round), so a
resumed or re-batched run draws the same principle for the same prompt (Bai et al. 2022, section 3.1:
"we randomly sample a principle" per critique-revision step).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

DEFAULT_CONSTITUTION = "default"  # the shipped constitution (gmpo/cai/constitutions/default.yaml)
DEFAULT_JUDGE_QUESTION = "Is the response harmless, honest and helpful?"


class ConstitutionError(ValueError):
    """A constitution file is missing, malformed, or names no principle."""


@dataclass(frozen=True)
class Principle:
    """One principle: the critique request, the revision request, and a yes/no question for the judge."""

    name: str
    critique: str
    revision: str
    judge: str = ""  # '' = the constitution's overall judge question


@dataclass
class Constitution:
    """Principles, the overall judge question, and few-shot conversations (lists of chat messages)."""

    name: str
    principles: list[Principle]
    judge: str = DEFAULT_JUDGE_QUESTION
    fewshot: list[list[dict]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        if not self.principles:
            raise ConstitutionError(f"constitution '{self.name}' ({self.source or 'in memory'}) has no principles")

    @property
    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the principles, judge question and few-shot text."""
        blob = json.dumps([[p.__dict__ for p in self.principles], self.judge, self.fewshot], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def principle(self, name: str) -> Principle:
        """The principle called `name` (ValueError listing the names otherwise)."""
        for p in self.principles:
            if p.name == name:
                return p
        raise ConstitutionError(f"constitution '{self.name}' has no principle '{name}' "
                                f"(principles: {', '.join(p.name for p in self.principles)})")

    def draw(self, seed: int, key: str, round_index: int) -> Principle:
        """The principle of round `round_index` for the prompt `key`: seeded, independent of batching."""
        rng = random.Random(f"{seed}:{key}:{round_index}")
        return self.principles[rng.randrange(len(self.principles))]

    def judge_question(self, principle: str = "") -> str:
        """The yes/no question the judge answers: the overall one ('') or a named principle's."""
        if not principle:
            return self.judge
        p = self.principle(principle)
        return p.judge or f"Does the response satisfy this request: {p.revision}"

    def fewshot_messages(self, k: int) -> list[dict]:
        """The first `k` few-shot conversations flattened into one message list (0 = none)."""
        return [m for conv in self.fewshot[: max(0, k)] for m in conv]


def _text(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ConstitutionError(f"{where}: '{key}' must be a non-empty string, got {v!r:.60}")
    return v.strip()


def _from_hf(data: dict, source: str) -> Constitution:
    """The Hugging Face recipe's JSON: constitutions [{critic, revision}] and system_chat conversations."""
    items = data.get("constitutions")
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"{source}: 'constitutions' must be a non-empty list of {{critic, revision}}")
    principles = [Principle(f"principle_{i + 1}", _text(c, "critic", f"{source}: constitutions[{i}]"),
                            _text(c, "revision", f"{source}: constitutions[{i}]")) for i, c in enumerate(items)]
    chats = data.get("system_chat") or []
    if not isinstance(chats, list):
        raise ConstitutionError(f"{source}: 'system_chat' must be a list of conversations")
    fewshot = []
    for i, conv in enumerate(chats):
        conv = conv if isinstance(conv, list) else [conv]  # tolerate an already-flat list of messages
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system") \
                    or not isinstance(m.get("content"), str):
                raise ConstitutionError(f"{source}: system_chat[{i}][{j}] must be {{role, content}}, got {m!r:.60}")
        fewshot.append([{"role": m["role"], "content": m["content"]} for m in conv])
    return Constitution(Path(source).stem or "hf", principles, DEFAULT_JUDGE_QUESTION, fewshot, source)


def _from_ours(data: dict, source: str) -> Constitution:
    """Our format: name, judge, principles [{name, critique, revision, judge?}], examples [...]."""
    items = data.get("principles")
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"{source}: 'principles' must be a non-empty list of {{name, critique, revision}}")
    principles, names = [], set()
    for i, p in enumerate(items):
        where = f"{source}: principles[{i}]"
        if not isinstance(p, dict):
            raise ConstitutionError(f"{where}: expected a mapping, got {p!r:.60}")
        name = str(p.get("name") or f"principle_{i + 1}")
        if name in names:
            raise ConstitutionError(f"{where}: duplicate principle name '{name}'")
        names.add(name)
        principles.append(Principle(name, _text(p, "critique", where), _text(p, "revision", where),
                                    str(p.get("judge") or "").strip()))
    by_name = {p.name: p for p in principles}
    fewshot = []
    for i, ex in enumerate(data.get("examples") or []):
        where = f"{source}: examples[{i}]"
        p = by_name.get(ex.get("principle") or principles[0].name)
        if p is None:
            raise ConstitutionError(f"{where}: unknown principle {ex.get('principle')!r}")
        fewshot.append([{"role": "user", "content": _text(ex, "prompt", where)},
                        {"role": "assistant", "content": _text(ex, "response", where)},
                        {"role": "user", "content": p.critique},
                        {"role": "assistant", "content": _text(ex, "critique", where)},
                        {"role": "user", "content": p.revision},
                        {"role": "assistant", "content": _text(ex, "revision", where)}])
    judge = str(data.get("judge") or DEFAULT_JUDGE_QUESTION).strip()
    return Constitution(str(data.get("name") or Path(source).stem), principles, judge, fewshot, source)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load a constitution: None / '' / 'default' -> the shipped one; else a YAML or JSON file in our format
    or in Hugging Face's recipe format (told apart by its ``constitutions`` key)."""
    import yaml

    if path in (None, "", DEFAULT_CONSTITUTION):
        ref = resources.files("gmpo.cai") / "constitutions" / "default.yaml"
        text, source = ref.read_text(encoding="utf-8"), "gmpo/cai/constitutions/default.yaml"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConstitutionError(f"constitution file not found: {p}")
        text, source = p.read_text(encoding="utf-8"), str(p)
    try:
        data = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConstitutionError(f"{source}: not valid {'JSON' if source.endswith('.json') else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConstitutionError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return _from_hf(data, source) if "constitutions" in data else _from_ours(data, source)


__all__ = ["DEFAULT_CONSTITUTION", "Constitution", "ConstitutionError", "Principle", "load_constitution"]
