"""Prompt templates: turn a question into the text the policy sees.

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

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

R1_TEMPLATE = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
    "here </answer>.\nUser: {question}\nAssistant: <think>"
)

TEMPLATES = ("chat", "qwen_math", "r1", "plain")


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


def render_prompt(tokenizer, question: str, template: str = "chat", system_prompt: str = "") -> str:
    """Render ``question`` with a template (see the module docstring) and return the prompt text.

    ``system_prompt`` applies to ``chat`` only; passing one with another template is an error rather
    than a silently ignored setting. Unknown template names raise ValueError listing the choices.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}: {question!r:.80}")
    if not isinstance(template, str) or not template:
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)} or a string containing '{{prompt}}'")
    if system_prompt and template != "chat":
        raise ValueError(
            f"system_prompt is only used with template 'chat' (template '{template:.40}' "
            + ("has its own system prompt)" if template == "qwen_math" else "has no system message)")
        )
    if template == "chat":
        return _chat(tokenizer, question, system_prompt, template)
    if template == "qwen_math":
        return _chat(tokenizer, question, QWEN_MATH_SYSTEM, template)
    if template == "r1":
        return R1_TEMPLATE.replace("{question}", question)
    if template == "plain":
        return question
    if "{prompt}" in template:
        return template.replace("{prompt}", question)
    raise ValueError(
        f"unknown template {template!r}: choose one of {', '.join(TEMPLATES)}, "
        "or give a custom string containing '{prompt}'"
    )
