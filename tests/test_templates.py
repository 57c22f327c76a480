"""Prompt templates: exact rendered text for each template with the tiny ChatML tokenizer."""
import pytest

from gmpo.data.prompts import QWEN_MATH_SYSTEM, render_prompt
from gmpo.testing import tiny_tokenizer


def test_chat_template_applied_with_generation_prompt(tok):
    text = render_prompt(tok, "What is 2 + 3?")
    assert text == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_with_system_prompt(tok):
    text = render_prompt(tok, "Hi", "chat", system_prompt="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen_math_has_boxed_instruction_as_system_message(tok):
    text = render_prompt(tok, "Solve x+1=2.", "qwen_math")
    assert QWEN_MATH_SYSTEM == "Please reason step by step, and put your final answer within \\boxed{}."
    assert text == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nSolve x+1=2.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_r1_template_wraps_question_and_ends_in_think(tok):
    text = render_prompt(tok, "What is {1+1}?", "r1")
    assert text.startswith("A conversation between User and Assistant. The User asks a question")
    assert "<think> reasoning process here </think> <answer> answer here </answer>.\nUser: What is {1+1}?\n" in text
    assert text.endswith("\nAssistant: <think>")


def test_plain_and_custom(tok):
    assert render_prompt(tok, "Q?", "plain") == "Q?"
    # braces other than {prompt} are kept verbatim (no str.format escaping needed)
    assert render_prompt(tok, "Q?", "Problem: {prompt}\nPut the answer in \\boxed{}.") == (
        "Problem: Q?\nPut the answer in \\boxed{}."
    )


def test_unknown_template_lists_choices(tok):
    with pytest.raises(ValueError, match="unknown template 'chatml'.*chat, qwen_math, r1, plain.*\\{prompt\\}"):
        render_prompt(tok, "Q", "chatml")


def test_missing_chat_template_is_a_clear_error():
    t = tiny_tokenizer()
    t.chat_template = None
    with pytest.raises(ValueError, match="has none.*data.template=plain"):
        render_prompt(t, "Q", "chat")
    with pytest.raises(ValueError, match="template 'qwen_math' needs a chat template"):
        render_prompt(t, "Q", "qwen_math")
    assert render_prompt(t, "Q", "r1").endswith("User: Q\nAssistant: <think>")


def test_system_prompt_with_non_chat_template_is_rejected(tok):
    with pytest.raises(ValueError, match="only used with template 'chat'"):
        render_prompt(tok, "Q", "r1", system_prompt="x")


def test_non_string_question_rejected(tok):
    with pytest.raises(TypeError, match="question must be a string"):
        render_prompt(tok, 12, "plain")
