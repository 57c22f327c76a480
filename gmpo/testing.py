"""Tiny offline tokenizer and random-init causal LM for smoke tests and examples (no hub access).

The tokenizer is character level over printable ASCII with ChatML special tokens and a chat template,
so prompts, stop strings and answers behave like a real chat model's, at a size that trains in seconds.
"""
from __future__ import annotations

import string

import torch

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: pad=<pad>, eos=<|im_end|>, ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>", unk_token="<unk>"
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_model(tokenizer=None, seed: int = 0, layers: int = 2, hidden: int = 64, dtype=torch.float32):
    """A random-init Llama-architecture causal LM sized for the tiny tokenizer (~0.1M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny(path, seed: int = 0):
    """Write a tiny model + tokenizer directory loadable by ``AutoModelForCausalLM.from_pretrained``."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
