"""Train a policy with GMPO or a GRPO-family algorithm.

    gmpo train CONFIG.yaml [key.path=value ...]

The recipe (YAML) is read, then every ``key.path=value`` override is applied (values parse as YAML:
``train.steps=5``, ``rollout.stop=[a,b]``). Unknown keys and bad values stop with a one-line message
(exit status 2). The run directory (``train.output_dir``) receives config.yaml (the resolved config),
metrics.jsonl, samples.jsonl, checkpoints/ and, when enabled, tb/ and alerts.jsonl.

Several processes (data parallel, see the README's 'Several processes and machines' section): ``gmpo train --nproc N CONFIG ...`` on one
machine, or ``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m gmpo train CONFIG ...``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from gmpo.config import ConfigError, describe, load_config, to_dict


def _options_epilog() -> str:
    rows = describe()
    width = max(len(k) for k, _, _ in rows)
    dwidth = min(max(len(d) for _, d, _ in rows), 24)
    lines = ["configuration options (key, default, description); set any with key.path=value:"]
    for key, default, text in rows:
        lines.append(f"  {key:<{width}}  {default:<{dwidth}}  {text}".rstrip())
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gmpo train`."""
    parser.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value",
                        help="a YAML recipe (optional; defaults otherwise) followed by key.path=value overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="build model, data, rewards and engine, print a summary, and exit without training")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel processes on this machine (launches torchrun --standalone "
                             "--nproc-per-node N -m gmpo train ...; default 1). Under torchrun already, leave it at 1")
    parser.epilog = _options_epilog()


def launch(nproc: int, items: list[str]) -> int:
    """Run `gmpo train ITEMS` as `nproc` ranks under torchrun (single machine); its exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "gmpo", "train", *items]
    print("gmpo train: launching " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """(config path or None, overrides): the config is the first item without '='."""
    path, overrides = None, []
    for i, item in enumerate(items):
        if "=" in item:
            overrides.append(item)
        elif path is None and i == 0:
            path = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: overrides look like key.path=value "
                              "and the config file comes first")
    return path, overrides


def run(args: argparse.Namespace) -> int:
    """Entry point of `gmpo train`."""
    import yaml

    try:
        path, overrides = split_items(args.items)
        cfg = load_config(path, overrides)
    except ConfigError as e:
        print(f"gmpo train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.nproc < 1:
        print(f"gmpo train: error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr)
        return 2
    if args.nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            print("gmpo train: error: --nproc under torchrun: torchrun already started the ranks", file=sys.stderr)
            return 2
        return launch(args.nproc, list(args.items) + (["--dry-run"] if args.dry_run else []))
    from gmpo.train import GMPOTrainer
    from gmpo.train.dist import rank_failure, teardown

    try:
        return _train(GMPOTrainer, cfg, args)
    except Exception as exc:  # noqa: BLE001 - only communication failures are handled here
        e = rank_failure(exc)
        if e is None:
            raise
        print(f"gmpo train: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # the process group is broken: destroying it can abort inside gloo (SIGABRT) and hide this exit code
        os._exit(1)
    finally:
        teardown()


def _train(trainer_cls, cfg, args) -> int:
    """Build the trainer, then dry-run or train; prints the summary (rank 0)."""
    try:
        trainer = trainer_cls(config=cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"gmpo train: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        if not trainer.is_main:
            return 0
        n_train = sum(p.numel() for p in trainer.params)
        print(f"model: {cfg.model.name_or_path} ({trainer.n_params / 1e6:.1f}M parameters, {n_train / 1e6:.2f}M trained) "
              f"on {trainer.device}, bf16={trainer.bf16}")
        print(f"algorithm: {trainer.spec.name} loss={trainer.spec.loss} {trainer.spec.loss_kwargs} "
              f"advantage={trainer.spec.advantage} reduction={trainer.spec.reduction}")
        print(f"data: {len(trainer.train_ds)} train / {len(trainer.eval_ds)} held-out prompts; "
              f"{trainer.updates.updates_per_batch} optimizer step(s) per rollout batch")
        return 0
    summary = trainer.train()
    if not trainer.is_main:
        return 0
    before, after = summary["eval_before"], summary["eval_after"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    if summary["stop_reason"]:
        print(f"stopped early: {summary['stop_reason']}")
    print(f"held-out accuracy: before {fmt(before)} -> after {fmt(after)}")
    print(f"run directory: {summary['run_dir']} ({summary['steps']} steps, {summary['wall_s']:.0f} s)")
    return 0
