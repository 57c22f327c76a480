"""`gmpo <verb> ...`: a thin dispatcher. Each verb lives in ``gmpo/commands/<verb>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; modules load only when their verb is used."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("gmpo.commands.train", "train a policy from a YAML recipe with key=value overrides"),
    "eval": ("gmpo.commands.eval", "evaluate a model on math benchmarks (Pass@1, mean@K, pass@K)"),
    "compare": ("gmpo.commands.compare", "run algorithms x seeds on one recipe and write a stability report"),
    "tune": ("gmpo.commands.tune", "search hyperparameters with Optuna (pruning on held-out accuracy, resumable)"),
    "serve": ("gmpo.commands.serve", "serve models behind the OpenAI API: batching, A/B experiments, quality monitoring"),
    "ab": ("gmpo.commands.ab", "A/B experiment statistics from the serving request log: gmpo ab report"),
    "dashboard": ("gmpo.commands.dashboard", "live web dashboard of training runs and the serving request log"),
    "registry": ("gmpo.commands.registry", "model registry: add versions, list, show, move aliases, history"),
    "promote": ("gmpo.commands.promote", "promote a registered candidate to production through an eval gate"),
    "rollback": ("gmpo.commands.rollback", "roll production back to the previous version"),
    "continual": ("gmpo.commands.continual", "safe continual learning: validate, probe, train, gate each new batch"),
    "cai": ("gmpo.commands.cai", "Constitutional AI data: critique -> revision generation from a constitution (resumable)"),
    "sft": ("gmpo.commands.sft", "supervised fine-tuning on (prompt, response) pairs, loss on response tokens only"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per available verb."""
    parser = argparse.ArgumentParser(prog="gmpo", description="RL post-training with GMPO and the GRPO family.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # verb not built in this version
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gmpo` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
