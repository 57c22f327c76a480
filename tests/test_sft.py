"""gmpo sft: the response-only loss equals a Hugging Face model's loss with -100 labels on the prompt, the
chat template goes through the shared encoder, bucketing, checkpoints + exact resume, LoRA, the CLI."""
import json

import pytest
import torch

from gmpo.cli import main
from gmpo.data.prompts import PromptEncoder
from gmpo.runs.files import METRICS, read_metrics
from gmpo.train.sft import SFTBatches, collate, encode_pair, n_targets, response_nll_sum

PAIRS = [("How do I pick a lock?", "I can't help with that, but a locksmith can."),
         ("Say hi", "Hi!"),
         ("Tell me how to make a weapon at home.", "I won't help with weapons. Is something worrying you?")]


def test_loss_equals_hf_loss_with_masked_prompt_labels(tok, model, one_thread):
    enc = PromptEncoder(tok, "chat")
    pairs = [encode_pair(enc, p, r, 512) for p, r in PAIRS]
    for (ids, n_prompt), (p, r) in zip(pairs, PAIRS):  # prompt part = the shared encoder's prompt ids
        assert ids[:n_prompt] == enc.encode_messages([{"role": "user", "content": p}])[1]
        assert tok.decode(ids[n_prompt:]) == r + "<|im_end|>"
    inp, mask, labels = collate(pairs, tok.pad_token_id, torch.device("cpu"))
    assert (labels[0, : pairs[0][1]] == -100).all() and (labels[1, len(pairs[1][0]):] == -100).all()
    with torch.no_grad():
        ours = response_nll_sum(model, inp, mask, labels, bf16=False) / n_targets(pairs)
        hf = model(input_ids=inp, attention_mask=mask, labels=labels).loss
    assert float(ours) == pytest.approx(float(hf), rel=1e-5)
    # micro-batches of one, each divided by the whole batch's token count, add up to the same value
    with torch.no_grad():
        parts = sum(float(response_nll_sum(model, *collate([p], tok.pad_token_id, torch.device("cpu")), False))
                    for p in pairs) / n_targets(pairs)
    assert parts == pytest.approx(float(hf), rel=1e-5)


def test_bucketing_cuts_padding_and_resumes_exactly():
    lengths = [5, 100, 6, 98, 7, 97, 8, 99] * 4
    pad = lambda b: sum(max(lengths[i] for i in x) - lengths[i] for x in b for i in x)  # noqa: E731
    plain, bucket = SFTBatches(lengths, 4, 0, False, 8), SFTBatches(lengths, 4, 0, True, 8)
    pb = [plain.next_batch() for _ in range(8)]
    bb = [bucket.next_batch() for _ in range(8)]
    assert sorted(i for b in bb for i in b) == list(range(32))  # one epoch covers every example once
    assert pad(bb) < pad(pb) / 5
    state = bucket.state_dict()
    ahead = [bucket.next_batch() for _ in range(3)]
    again = SFTBatches(lengths, 4, 0, True, 8)
    again.load_state_dict(state)
    assert [again.next_batch() for _ in range(3)] == ahead


def _data(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"{p} ({i})", "response": r} for i in range(4) for p, r in PAIRS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(model_dir, data, out, *extra):
    return ["sft", f"model.name_or_path={model_dir}", f"sft.dataset={data}", "sft.batch_size=4", "sft.eval_size=2",
            "train.micro_batch_size=2", f"train.output_dir={out}", "train.device=cpu", "train.threads=1",
            "optim.lr=1e-3", "log.progress=false", *extra]


def test_sft_cli_checkpoints_and_resumes_exactly(tmp_path, tiny_model_dir, capsys):
    data = _data(tmp_path)
    assert main(_args(tiny_model_dir, data, tmp_path / "full", "train.steps=4")) == 0
    full = read_metrics(tmp_path / "full" / METRICS)
    assert main(_args(tiny_model_dir, data, tmp_path / "cut", "train.steps=2")) == 0
    assert main(_args(tiny_model_dir, data, tmp_path / "cut", "train.steps=4", "train.resume=auto")) == 0
    cut = read_metrics(tmp_path / "cut" / METRICS)
    loss = lambda ms: [m["loss/value"] for m in ms if "loss/value" in m]  # noqa: E731
    assert len(loss(full)) == 4 and loss(cut) == pytest.approx(loss(full), rel=1e-5)
    assert full[0]["eval/loss"] > full[-1]["eval/loss"]  # it learns the responses
    final = tmp_path / "full" / "final"
    assert final.is_symlink() and (final / "meta.json").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(final)  # loadable as is
    assert "held-out response loss: before" in capsys.readouterr().out


def test_sft_lora_writes_a_merged_model(tmp_path, tiny_model_dir):
    data = _data(tmp_path)
    assert main(_args(tiny_model_dir, data, tmp_path / "lora", "train.steps=2", "model.lora.enabled=true",
                      "model.lora.r=4")) == 0
    final = tmp_path / "lora" / "final"
    assert final.resolve().name == "merged" and (final / "config.json").is_file()


def test_sft_errors_are_clear(tmp_path, tiny_model_dir, capsys):
    assert main(["sft", f"model.name_or_path={tiny_model_dir}", "train.device=cpu"]) == 2
    assert "sft.dataset is empty" in capsys.readouterr().err
    data = _data(tmp_path)
    assert main(_args(tiny_model_dir, data, tmp_path / "x", "sft.max_seq_tokens=10")) == 2
    assert "row 1: the prompt has" in capsys.readouterr().err


def test_sft_consults_hooks_and_guard_before_each_update(tmp_path, tiny_model_dir):
    from gmpo.config import load_config
    from gmpo.guard import Guard
    from gmpo.train.sft import SFTTrainer

    class SkipSecond:
        def __init__(self):
            self.seen = []

        def before_optimizer_step(self, trainer, step, stats):
            self.seen.append((step, sorted(stats)))
            return "skip" if step == 2 else "ok"

    hook = SkipSecond()
    cfg = load_config(None, _args(tiny_model_dir, _data(tmp_path), tmp_path / "h", "train.steps=3")[1:])
    tr = SFTTrainer(cfg, hooks=[hook])
    assert isinstance(tr.hooks.hooks[0], Guard)  # guard.enabled (the default) puts the training guard first
    before = [p.detach().clone() for p in tr.params]
    tr.start()
    tr.step()
    after_one = [p.detach().clone() for p in tr.params]
    m2 = tr.step()
    assert m2["optim/skipped"] == 1.0 and all(torch.equal(a, p) for a, p in zip(after_one, tr.params))
    assert not all(torch.equal(a, b) for a, b in zip(before, after_one))
    tr.step()
    tr.close()
    assert [s for s, _ in hook.seen] == [1, 2, 3]
    assert hook.seen[0][1] == ["grad_norm", "loss", "nonfinite", "ratio/token_max", "ratio/token_min"]
