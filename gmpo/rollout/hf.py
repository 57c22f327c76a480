"""Reference backend: Hugging Face ``model.generate``.

Slower than :class:`gmpo.rollout.engine.KVCacheEngine` (no prefix sharing, finished rows keep
decoding padding) but it is the library's own sampler, so it serves as the yardstick for the engine's
outputs and speed. Log-probs use the unprocessed logits HF returns (``output_logits=True``), divided
by the temperature, so they follow the same definition as the engine's.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from gmpo.rollout.base import Rollout, SamplingParams
from gmpo.algo.ops import softmax_entropy
from gmpo.rollout.engine import StopChecker, eos_token_ids, finalize, pad_token_id, validate_request


class HFGenerateEngine:
    """Rollouts through ``model.generate`` with a fresh ``GenerationConfig`` (only the given sampling
    settings apply, never a checkpoint's own defaults such as top_k=50 or a repetition penalty)."""

    def __init__(self, model, tokenizer, *, bf16: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.bf16 = bf16
        self._eos = eos_token_ids(model, tokenizer)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """No-op: ``generate`` runs on the policy module itself."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Rollout:
        """Sample ``params.n`` completions per prompt with ``model.generate`` (group-major rows)."""
        from transformers import GenerationConfig

        validate_request(prompts, params, self.model)
        device = next(self.model.parameters()).device
        pad = pad_token_id(self.tokenizer)
        L = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (L - len(p)) + list(p) for p in prompts], device=device)  # (P, L) left-padded
        attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)
        # Expand each prompt to its n rows ourselves (group-major): HF refuses num_return_sequences > 1
        # when greedy.
        ids, attn = ids.repeat_interleave(params.n, dim=0), attn.repeat_interleave(params.n, dim=0)  # (N, L)
        greedy = params.temperature == 0
        cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            pad_token_id=pad,
            eos_token_id=self._eos or None,
            output_logits=True,
            return_dict_in_generate=True,
            **({} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}),
            **({"stop_strings": list(params.stop)} if params.stop else {}),
        )
        was_training = self.model.training
        self.model.eval()
        try:
            # A seeded call samples from a forked global RNG (same seed, same samples; the caller's stream is
            # untouched); an unseeded one consumes the global stream like any other sampler.
            seeded = params.seed is not None
            fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seeded)
            with fork:
                if seeded:
                    torch.manual_seed(params.seed)
                autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
                # generate runs under no_grad itself; inference_mode would disable autocast's weight-cast cache
                with autocast:
                    out = self.model.generate(
                        input_ids=ids, attention_mask=attn, generation_config=cfg, tokenizer=self.tokenizer
                    )
        finally:
            self.model.train(was_training)

        gen = out.sequences[:, L:]  # (N, T') generated part; T' <= max_new_tokens
        temp = 1.0 if greedy else params.temperature
        # out.logits: T' tensors (N, V) of unprocessed logits; one step at a time, so no (N, T', V) float32 copy.
        lp = torch.stack(
            [torch.log_softmax(step.float() / temp, -1).gather(-1, gen[:, t, None]).squeeze(-1) for t, step in enumerate(out.logits)],
            dim=1,
        ).cpu()  # (N, T')
        ent = None
        if params.entropy:  # of softmax(logits / temperature), the distribution the log-probs come from
            ent = torch.stack([softmax_entropy(step.float() / temp) for step in out.logits], dim=1).cpu()  # (N, T')
        gen = gen.cpu()
        # Where each row really ends: the first EOS, or the step its decoded text first holds a stop string.
        stop = StopChecker(self.tokenizer, params.stop)
        N, Tg = gen.shape
        lengths = torch.full((N,), Tg, dtype=torch.long)
        ended = torch.zeros(N, dtype=torch.bool)
        eos = set(self._eos)
        for r, row in enumerate(gen.tolist()):
            for t, tid in enumerate(row):
                if tid in eos or (stop and stop.hits([row[: t + 1]])[0]):
                    lengths[r], ended[r] = t + 1, True
                    break
        T = params.max_new_tokens
        tokens = torch.full((N, T), pad, dtype=torch.long)
        logprobs = torch.zeros((N, T), dtype=torch.float32)
        tokens[:, :Tg], logprobs[:, :Tg] = gen, lp
        entropy = None
        if ent is not None:
            entropy = torch.zeros((N, T), dtype=torch.float32)
            entropy[:, :Tg] = ent
        return finalize(prompts, params.n, tokens, logprobs, lengths, ended, self.tokenizer, stop, entropy)


def build(model, tokenizer, *, bf16: bool = False, decode_batch_size: int = 256) -> HFGenerateEngine:
    """The registry builder of this backend (see :mod:`gmpo.rollout.backends`)."""
    return HFGenerateEngine(model, tokenizer, bf16=bf16)
