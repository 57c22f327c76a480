"""Supervised fine-tuning on (prompt, response) pairs, with the loss on response tokens only.

    gmpo sft CONFIG.yaml [key.path=value ...]

The recipe is a `gmpo train` config with an `sft` section (sft.dataset, sft.prompt_field, sft.response_field,
sft.batch_size, sft.max_seq_tokens, sft.bucket, sft.eval_size); model.*, optim.*, train.steps (optimizer
steps), train.micro_batch_size, train.output_dir, train.save_every, train.resume, data.template /
data.system_prompt (the chat template), log.*, guard.* and model.lora.* mean what they mean for `gmpo train`.
The run directory gets config.yaml, metrics.jsonl (loss/value, grad/norm, eval/loss, sft/*), alerts.jsonl,
checkpoints/ and `final` (a link to the last checkpoint's loadable model). See the README's Constitutional AI section.

example:
  gmpo sft configs/cai_sft.yaml sft.dataset=runs/cai/data/sft.jsonl train.steps=100
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gmpo sft` (the config keys are listed by `gmpo train --help`; the sft.* ones below)."""
    from gmpo.config import describe

    parser.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                        help="a YAML recipe followed by key.path=value overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    rows = [r for r in describe() if r[0].startswith("sft.")]
    width = max(len(k) for k, _, _ in rows)
    parser.epilog = "sft options (all other keys as in `gmpo train --help`):\n" + "\n".join(
        f"  {k:<{width}}  {d:<8}  {h}" for k, d, h in rows)


def run(args: argparse.Namespace) -> int:
    """Entry point of `gmpo sft`."""
    import yaml

    from gmpo.commands.train import split_items
    from gmpo.config import ConfigError, load_config, to_dict

    try:
        path, overrides = split_items(args.items)
        cfg = load_config(path, overrides)
    except ConfigError as e:
        print(f"gmpo sft: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from gmpo.data.errors import DataError
    from gmpo.train.sft import SFTTrainer

    try:
        trainer = SFTTrainer(cfg)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"gmpo sft: error: {e}", file=sys.stderr)
        return 2
    s = trainer.train()
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    if s["stop_reason"]:
        print(f"stopped early: {s['stop_reason']}")
    print(f"held-out response loss: before {fmt(s['eval_loss_before'])} -> after {fmt(s['eval_loss_after'])}")
    print(f"run directory: {s['run_dir']} ({s['steps']} steps, {s['wall_s']:.0f} s); model: {s['final_model']}")
    return 0
