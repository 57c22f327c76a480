"""The one prompt encoder: turn a question (or chat messages) into the text and token ids the policy sees.

Training, held-out accuracy, ``gmpo eval``, serving and Constitutional-AI generation all encode prompts
through :class:`PromptEncoder`, so a template means the same token ids everywhere (including the BOS a
Llama-style tokenizer expects before raw-text templates; chat templates write their own).

Templates (``data.template``):

- ``chat``: the tokenizer's own chat template, an optional system message, and the assistant
  generation prompt (the default: what an instruct model was trained on).
- ``qwen_math``: the chat template with the Qwen2.5-Math system prompt ("Please reason step by step,
  and put your final answer within \\boxed{}."), the template of the GMPO / Dr. GRPO papers for
  Qwen2.5-Math models.
- ``r1``: the DeepSeek R1-Zero plain-text template as used by understand-r1-zero and the GMPO paper; it
  ends with ``"Assistant: <think>"`` so the completion starts inside the reasoning block.
- ``plain``: the question unchanged.
- any other string containing ``{prompt}``: raw text with ``{prompt}`` replaced by the question (other
  braces are left alone, so ``\\boxed{}`` needs no escaping). No chat template is applied.
"""
from __future__ import annotations

from gmpo.registry import Registry

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

R1_TEMPLATE = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
    "here </answer>.\nUser: {question}\nAssistant: <think>"
)

TEMPLATES = Registry("template")  # name -> render(tokenizer, question, system_prompt) -> text; meta: chat (bool)


def _chat(tokenizer, question: str, system_prompt: str, template: str) -> str:
    """Apply the tokenizer's chat template to [system?, user] with the assistant generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"template '{template}' needs a chat template, but tokenizer '{name}' has none "
            "(a base model?); use data.template=plain, r1, or a custom string containing '{prompt}'"
        )
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    # tokenize=False: transformers 5 returns a BatchEncoding when tokenizing; callers tokenize the text.
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@TEMPLATES.add("chat", chat=True, system=True)
def _chat_template(tokenizer, question: str, system_prompt: str) -> str:
    """the tokenizer's chat template, optional system message, assistant generation prompt"""
    return _chat(tokenizer, question, system_prompt, "chat")


@TEMPLATES.add("qwen_math", chat=True, system=False)
def _qwen_math(tokenizer, question: str, system_prompt: str) -> str:
    """the chat template with the Qwen2.5-Math system prompt (GMPO / Dr. GRPO papers)"""
    return _chat(tokenizer, question, QWEN_MATH_SYSTEM, "qwen_math")


@TEMPLATES.add("r1", chat=False, system=False)
def _r1(tokenizer, question: str, system_prompt: str) -> str:
    """the DeepSeek R1-Zero plain-text template, ending in 'Assistant: <think>'"""
    return R1_TEMPLATE.replace("{question}", question)


@TEMPLATES.add("plain", chat=False, system=False)
def _plain(tokenizer, question: str, system_prompt: str) -> str:
    """the question unchanged"""
    return question


def is_chat_template(template: str) -> bool:
    """Whether `template` is rendered by the tokenizer's chat template (which writes its own BOS)."""
    return template in TEMPLATES and TEMPLATES.meta(template)["chat"]


def render_prompt(tokenizer, question: str, template: str = "chat", system_prompt: str = "") -> str:
    """Render ``question`` with a template (see the module docstring) and return the prompt text.

    ``system_prompt`` applies to templates that take one (``chat``); passing one with another template is
    an error rather than a silently ignored setting. Unknown template names raise ValueError listing the
    choices.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}: {question!r:.80}")
    names = ", ".join(TEMPLATES.names())
    if not isinstance(template, str) or not template:
        raise ValueError(f"template must be one of {names} or a string containing '{{prompt}}'")
    if template in TEMPLATES:
        if system_prompt and not TEMPLATES.meta(template)["system"]:
            raise ValueError(
                f"system_prompt is only used with template 'chat' (template '{template}' "
                + ("has its own system prompt)" if template == "qwen_math" else "has no system message)"))
        return TEMPLATES.get(template)(tokenizer, question, system_prompt)
    if system_prompt:
        raise ValueError(f"system_prompt is only used with template 'chat' (template '{template:.40}' has no system message)")
    if "{prompt}" in template:
        return template.replace("{prompt}", question)
    raise ValueError(f"unknown template {template!r}: choose one of {names}, or give a custom string containing '{{prompt}}'")


def leading_bos(tokenizer) -> int | None:
    """The BOS id when the tokenizer prepends one by default (Llama-style), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if with_sp[:1] == [bos] and with_sp[1:] == without else None


class PromptTooLong(ValueError):
    """A rendered prompt exceeds the token limit; ``index`` is its position in the encoded list."""

    def __init__(self, index: int, n_tokens: int, limit: int, question: str):
        self.index, self.n_tokens, self.limit = index, n_tokens, limit
        self.excerpt = question[:60] + ("..." if len(question) > 60 else "")
        super().__init__(f"prompt {index + 1}: the rendered prompt has {n_tokens} tokens, more than the limit of "
                         f"{limit} (prompt {self.excerpt!r})")


class PromptEncoder:
    """Renders and tokenizes prompts with one template, identically for every caller.

    template / system_prompt: as :func:`render_prompt`; max_prompt_tokens: longer prompts raise
    ValueError naming the prompt (0 = no limit). Raw-text templates (r1, plain, custom strings) get the
    tokenizer's BOS prepended when the tokenizer adds one by default; chat templates do not (they write
    their own).
    """

    def __init__(self, tokenizer, template: str = "chat", system_prompt: str = "", max_prompt_tokens: int = 0):
        self.tokenizer, self.template, self.system_prompt = tokenizer, template, system_prompt
        self.max_prompt_tokens = int(max_prompt_tokens)
        self._bos = None if is_chat_template(template) else leading_bos(tokenizer)

    @classmethod
    def from_config(cls, tokenizer, data_cfg) -> "PromptEncoder":
        """The encoder of a :class:`gmpo.config.DataConfig` (template, system prompt, length limit)."""
        return cls(tokenizer, data_cfg.template, data_cfg.system_prompt, data_cfg.max_prompt_tokens)

    def render(self, question: str) -> str:
        """The prompt text of `question` under this encoder's template."""
        return render_prompt(self.tokenizer, question, self.template, self.system_prompt)

    def _ids(self, texts: list[str], bos: int | None) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [[bos] + x for x in ids] if bos is not None else [list(x) for x in ids]

    def _check(self, ids: list[list[int]], questions: list) -> None:
        limit = self.max_prompt_tokens
        for i, x in enumerate(ids):
            if limit and len(x) > limit:
                raise PromptTooLong(i, len(x), limit, str(questions[i]))

    def encode_batch(self, questions: list[str]) -> tuple[list[str], list[list[int]]]:
        """(rendered texts, token ids) of every question, tokenized in one call."""
        texts = [self.render(q) for q in questions]
        ids = self._ids(texts, self._bos)
        self._check(ids, questions)
        return texts, ids

    def encode(self, question: str) -> list[int]:
        """Token ids of one question."""
        return self.encode_batch([question])[1][0]

    def encode_messages(self, messages: list[dict], add_generation_prompt: bool = True) -> tuple[str, list[int]]:
        """(text, ids) of a chat conversation through the tokenizer's chat template.

        The encoder's system prompt is added when the messages have none; raises ValueError when the
        tokenizer has no chat template or a message is malformed.
        """
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] must be an object with string 'role' and 'content', got {m!r:.80}")
        if not getattr(self.tokenizer, "chat_template", None):
            name = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
            raise ValueError(f"tokenizer '{name}' has no chat template: send a plain prompt instead of messages")
        system = self.system_prompt or (QWEN_MATH_SYSTEM if self.template == "qwen_math" else "")
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + list(messages)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        ids = self._ids([text], None)
        self._check(ids, [messages[-1]["content"]])
        return text, ids[0]
