"""The prompt stream of training: endless batches of encoded prompts with seeded shuffling and exact resume."""
from __future__ import annotations

import hashlib

import numpy as np

from gmpo.data.errors import DataError
from gmpo.data.prompts import PromptEncoder, PromptTooLong


class PromptLoader:
    """Endless batches of rendered, tokenized prompts with seeded per-epoch shuffling and exact resume.

    Every prompt is rendered (``data.template``) and tokenized once at construction, so a prompt longer
    than ``data.max_prompt_tokens`` fails before training starts, naming its row. The order of epoch e is
    ``numpy.random.default_rng([seed, e]).permutation(n)``: a pure function of (seed, epoch), so
    :meth:`state_dict` needs only (epoch, position) to continue with exactly the same batches. A batch
    that crosses an epoch boundary continues with the next epoch's order.
    """

    def __init__(self, dataset, tokenizer, data_cfg, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.rows: list[dict] = dataset.to_list()
        if not self.rows:
            raise DataError("PromptLoader: the dataset has no rows")
        if "prompt" not in self.rows[0]:
            raise DataError(f"PromptLoader: the dataset needs a 'prompt' column (has {', '.join(self.rows[0])})")
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = bool(data_cfg.shuffle)
        encoder = PromptEncoder.from_config(tokenizer, data_cfg)
        try:
            self.texts, self.ids = encoder.encode_batch([r["prompt"] for r in self.rows])
        except PromptTooLong as e:
            raise DataError(f"dataset row {e.index + 1}: the rendered prompt has {e.n_tokens} tokens, more than "
                            f"data.max_prompt_tokens={e.limit} (prompt {e.excerpt!r})") from None
        self.fingerprint = hashlib.sha1("\x00".join(self.texts).encode()).hexdigest()
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def __len__(self) -> int:
        """Number of prompts in one epoch."""
        return len(self.rows)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self.rows)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _item(self, i: int) -> dict:
        item = dict(self.rows[i])
        item["prompt_text"] = self.texts[i]
        item["prompt_ids"] = list(self.ids[i])
        return item

    def next_batch(self) -> list[dict]:
        """The next ``batch_size`` prompts: dicts with prompt, prompt_text, prompt_ids, answer and the rest."""
        out = []
        while len(out) < self.batch_size:
            if self.position >= len(self.rows):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            out.append(self._item(int(self._order[self.position])))
            self.position += 1
        return out

    def __iter__(self):
        return self

    def __next__(self) -> list[dict]:
        return self.next_batch()

    def state_dict(self) -> dict:
        """Position in the stream: epoch, position in the epoch's order, the order's seed and the data's identity."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.rows),
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; the data must be the same (rows and rendered prompts)."""
        if state.get("num_rows") != len(self.rows) or state.get("fingerprint") != self.fingerprint:
            raise DataError(
                f"cannot resume the prompt stream: the checkpoint was taken on {state.get('num_rows')} prompts "
                f"(fingerprint {str(state.get('fingerprint'))[:12]}), this data has {len(self.rows)} "
                f"(fingerprint {self.fingerprint[:12]}); the dataset, its fields or the template changed"
            )
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
