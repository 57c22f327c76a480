"""Constitutional AI data: critique -> revision generation (Bai et al. 2022, arXiv 2212.08073).

    gmpo cai generate --prompts DATA --constitution FILE --model M --out DIR [--rounds R] [--endpoint URL]

For each prompt of DATA (jsonl / json / parquet with a `prompt` column) the model answers, then per round
critiques its current answer against a principle drawn (seeded) from the constitution and revises it. The
prompts are first split into a fixed training part and a held-out evaluation part (--eval-size prompts,
chosen by a seeded hash of the text, independent of file order); generation uses the training part.
Rerunning the same command continues where it stopped (finished prompts are not redone).

OUT/ receives full / sft / prefs as .jsonl and .parquet (sft: prompt -> final revision; prefs: chosen =
final revision, rejected = initial answer), prompts/train.jsonl and prompts/eval.jsonl (the split),
records.jsonl (progress) and meta.json (settings). See the README's Constitutional AI section.

examples:
  gmpo cai generate --prompts ../shared/data/redteam_prompts.jsonl --model smollm2-135m-instruct \\
      --out runs/cai/data --limit 300 --rounds 1
  gmpo cai generate --prompts prompts.jsonl --constitution hf_constitution.json --model my-model \\
      --endpoint http://127.0.0.1:8000 --out runs/cai/big --rounds 2 --fewshot 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo cai`."""
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    g = sub.add_parser("generate", help="critique -> revision data from a constitution (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--prompts", required=True, help="prompt file: jsonl, json or parquet with a prompt column")
    g.add_argument("--prompt-field", default="prompt", help="the column holding the prompt text")
    g.add_argument("--constitution", default="default",
                   help="constitution file (our YAML/JSON format or Hugging Face's recipe JSON); "
                        "'default' = the shipped one (gmpo/cai/constitutions/default.yaml)")
    g.add_argument("--model", default="smollm2-135m-instruct",
                   help="model name or path (in-process), or the model name sent to --endpoint")
    g.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    g.add_argument("--rounds", type=int, default=1, help="critique -> revision rounds per prompt")
    g.add_argument("--endpoint", default="", help="OpenAI-compatible server URL (e.g. http://127.0.0.1:8000); "
                                                  "'' = run --model in-process through gmpo's rollout engine")
    g.add_argument("--api-key", default="", help="endpoint API key (default: $OPENAI_API_KEY)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per endpoint request")
    g.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per batch (every stage of a batch is one call)")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer, critique and revision")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0 = greedy)")
    g.add_argument("--seed", type=int, default=0, help="seeds the principle draws and the sampling")
    g.add_argument("--fewshot", type=int, default=0, help="few-shot conversations of the constitution to prepend")
    g.add_argument("--limit", type=int, default=0, help="use only the first N prompts of the chosen split (0 = all)")
    g.add_argument("--split", choices=("train", "eval", "all"), default="train",
                   help="which part of the held-out split to generate for")
    g.add_argument("--eval-size", type=int, default=200, help="prompts held out for evaluation")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split")
    g.add_argument("--system-prompt", default="", help="system message for the in-process model ('' = none)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (in-process model)")
    g.add_argument("--dtype", default="float32", help="float32 | bfloat16 (in-process model)")
    g.add_argument("--bf16", choices=("auto", "true", "false"), default="auto",
                   help="bf16 autocast for the in-process model (auto: where the device has fast bf16)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def _client(args):
    """The EndpointClient of --endpoint, or an EngineClient over --model loaded in-process."""
    from gmpo.cai.client import EndpointClient, EngineClient

    if args.endpoint:
        return EndpointClient(args.endpoint, args.model, args.api_key, args.timeout, args.concurrency)
    import torch

    from gmpo import models

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = models.resolve_device(args.device)
    model, tok = models.load_model(args.model, dtype=args.dtype, device=device)
    bf16 = models.bf16_supported(device) if args.bf16 == "auto" else args.bf16 == "true"
    return EngineClient(model.eval(), tok, args.system_prompt, decode_batch_size=max(args.batch_size, 1), bf16=bf16)


def run_generate(args) -> int:
    """`gmpo cai generate`: split the prompts, write the split, generate (resumably), write the dataset."""
    from gmpo.cai.constitution import ConstitutionError, load_constitution
    from gmpo.cai.data import read_prompts, split_prompts, write_jsonl
    from gmpo.cai.generate import GenerateSettings, generate

    try:
        constitution = load_constitution(args.constitution)
        rows = read_prompts(args.prompts, args.prompt_field)
        train, held = split_prompts(rows, args.eval_size, args.split_seed)
        for name, v in (("--rounds", args.rounds), ("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
    except (ConstitutionError, ValueError, FileNotFoundError) as e:
        print(f"gmpo cai generate: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_jsonl(out / "prompts" / "train.jsonl", train)
    write_jsonl(out / "prompts" / "eval.jsonl", held)
    chosen = {"train": train, "eval": held, "all": rows}[args.split]
    chosen = chosen[: args.limit] if args.limit > 0 else chosen
    settings = GenerateSettings(args.rounds, args.batch_size, args.max_new_tokens, args.temperature, args.seed,
                                args.fewshot)
    client = _client(args)
    try:
        res = generate(client, chosen, constitution, out, settings, model=args.model,
                       log=lambda s: print(s, file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"gmpo cai generate: error: {e}", file=sys.stderr)
        return 2
    finally:
        if hasattr(client, "close"):
            client.close()
    print(f"{res['done']} prompts in {out} ({res['new']} generated now, {res['skipped']} already done); "
          f"splits: " + ", ".join(f"{k} {v}" for k, v in res["splits"].items()) +
          f"; held-out prompts: {out / 'prompts' / 'eval.jsonl'} ({len(held)})")
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `gmpo cai`."""
    if getattr(args, "action", None) != "generate":
        print("usage: gmpo cai generate --prompts DATA --out DIR [options] (see gmpo cai generate --help)",
              file=sys.stderr)
        return 2
    return run_generate(args)
