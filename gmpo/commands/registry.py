"""The model registry: record model versions, list and inspect them, move aliases, show alias history.

The registry is an SQLite database (WAL) with a registry-owned store beside it (<db>.d/): `add` copies the
model's weights, configs and tokenizer there, fsyncs and verifies them (sha256 of the safetensors) before the
version is recorded, so an alias always names a complete model. Any command that takes a model accepts
registry:NAME@ALIAS (the registry at $GMPO_REGISTRY or ~/.cache/gmpo/registry.db).

examples:
  gmpo registry add runs/arith/checkpoints/step_000020 --name arith --alias candidate
  gmpo registry list
  gmpo registry show arith@production
  gmpo registry alias set arith@production 3
  gmpo registry history arith
  gmpo registry check --gc
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path


def add_registry_option(p: argparse.ArgumentParser) -> None:
    """The --registry option every registry-using verb takes."""
    p.add_argument("--registry", default=None,
                   help="registry database path (default: $GMPO_REGISTRY or ~/.cache/gmpo/registry.db)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `gmpo registry`."""
    add_registry_option(p)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    a = sub.add_parser("add", help="copy a model directory into the registry as a new version")
    a.add_argument("path", help="a model directory (save_pretrained output or a gmpo checkpoint step_NNNNNN), or a "
                                "run directory: its newest complete checkpoint")
    a.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    a.add_argument("--parent", type=int, default=None,
                   help="the version it was trained from (default: read from the run directory when the run started "
                        "from a registry:NAME@... reference of this model)")
    a.add_argument("--run-dir", default=None, help="the training run directory (default: inferred from a checkpoint)")
    a.add_argument("--config", default=None, help="training config YAML to record (default: <run-dir>/config.yaml)")
    a.add_argument("--data", default=None, help="training data file(s), comma-separated: their sha256 is recorded")
    a.add_argument("--eval-results", default=None, help="a JSON file of eval results to record")
    a.add_argument("--alias", default=None, help="also point this alias at the new version (e.g. candidate)")
    a.add_argument("--json", action="store_true", help="print the new version as JSON")
    ls = sub.add_parser("list", help="models, or the versions of one model")
    ls.add_argument("name", nargs="?", default=None, help="model name (default: every model)")
    sh = sub.add_parser("show", help="one version in full (JSON)")
    sh.add_argument("ref", help="NAME, NAME@ALIAS or NAME@VERSION")
    al = sub.add_parser("alias", help="move an alias")
    alsub = al.add_subparsers(dest="alias_action", metavar="set")
    st = alsub.add_parser("set", help="point NAME@ALIAS at VERSION (atomic, recorded in the history)")
    st.add_argument("target", help="NAME@ALIAS")
    st.add_argument("version", help="a version number, or 'none' to remove the alias")
    st.add_argument("--reason", default="alias set", help="recorded with the move")
    hi = sub.add_parser("history", help="every alias move of a model")
    hi.add_argument("name")
    hi.add_argument("--alias", default=None, help="only this alias")
    ck = sub.add_parser("check", help="verify every version's files and every alias (exit 1 on a problem)")
    ck.add_argument("--gc", action="store_true", help="delete orphan store directories left by interrupted adds")
    ck.add_argument("--gc-min-age", type=float, default=600.0,
                    help="only orphans older than this many seconds (spares an add in progress; default %(default)s)")
    ck.add_argument("--fast", action="store_true", help="sizes only, no sha256")


def _ts(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _fingerprint(paths: str) -> str:
    from gmpo.runs.store import sha256_file

    parts = [f"{Path(p).name} {sha256_file(Path(p))}" for p in paths.split(",") if p.strip()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest() if len(parts) > 1 else parts[0].split()[1]


def _add(reg, args) -> int:
    import yaml

    src = Path(args.path)
    if not (src / "config.json").is_file() and (src / "checkpoints").is_dir():  # a run directory
        from gmpo.runs.checkpoint import checkpoint_dirs

        found = checkpoint_dirs(src / "checkpoints")
        if not found:
            print(f"error: {src}/checkpoints has no complete checkpoint (one with meta.json)", file=sys.stderr)
            return 1
        src = found[-1]
        print(f"{args.path}: registering its newest complete checkpoint {src}")
    run_dir = args.run_dir
    if run_dir is None and src.parent.name == "checkpoints":
        run_dir = str(src.parent.parent)
    parent = args.parent
    if parent is None and run_dir:  # a run that started from this model's registered version: its parent
        from gmpo.runs.files import read_model_source

        origin = read_model_source(run_dir)
        if origin and origin.get("name") == args.name:
            parent = int(origin["version"])
            print(f"parent: {args.name}@{parent} (the run started from {origin.get('ref')}, sha256 "
                  f"{str(origin.get('sha256'))[:12]})")
    cfg_path = Path(args.config) if args.config else (Path(run_dir) / "config.yaml" if run_dir else None)
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path and cfg_path.is_file() else None
    evals = json.loads(Path(args.eval_results).read_text()) if args.eval_results else None
    mv = reg.add(src, args.name, parent=parent, run_dir=run_dir, config=config,
                 data_fingerprint=_fingerprint(args.data) if args.data else None, eval_results=evals, alias=args.alias)
    if args.json:
        print(json.dumps(mv.to_dict(), indent=2))
    else:
        print(f"registered {mv.ref} sha256 {mv.sha256[:16]} at {mv.path}" + (f" ({args.alias})" if args.alias else ""))
    return 0


def _list(reg, args) -> int:
    names = [args.name] if args.name else reg.names()
    if not names:
        print(f"(no models in {reg.path})")
    for name in names:
        versions = reg.versions(name)
        if args.name and not versions:
            print(f"no model named {name!r} in {reg.path}", file=sys.stderr)
            return 1
        print(f"{name}:")
        for v in versions:
            print(f"  v{v.version:<3} {_ts(v.created)}  sha {v.sha256[:12]}  parent {v.parent if v.parent else '-':<3} "
                  f"{','.join(v.aliases) or '':<22} {v.source or ''}")
    return 0


def _alias_set(reg, args) -> int:
    from gmpo.runs.model_registry import parse_ref

    name, alias = parse_ref(args.target)
    if "@" not in args.target or isinstance(alias, int):
        print(f"expected NAME@ALIAS, got {args.target!r}", file=sys.stderr)
        return 2
    version = None if args.version.lower() == "none" else int(args.version.lstrip("v"))
    reg.set_alias(name, alias, version, args.reason)
    print(f"{name}@{alias} -> {version if version is not None else '(removed)'}")
    return 0


def _history(reg, args) -> int:
    rows = reg.history(args.name, args.alias)
    if not rows:
        print(f"(no alias moves for {args.name})")
    for r in rows:
        old = "-" if r["old_version"] is None else r["old_version"]
        new = "-" if r["new_version"] is None else r["new_version"]
        print(f"{_ts(r['ts'])}  {r['alias']:<12} {old!s:>3} -> {new!s:<3} {r['actor'] or '':<20} {r['reason'] or ''}")
    return 0


def _check(reg, args) -> int:
    res = reg.check(deep=not args.fast)
    for p in res["problems"]:
        print(f"PROBLEM: {p}")
    for o in res["orphans"]:
        print(f"orphan (interrupted add): {o}")
    if args.gc:
        for d in reg.collect_garbage(args.gc_min_age):
            print(f"removed {d}")
    print(f"{len(res['problems'])} problem(s), {len(res['orphans'])} orphan(s)")
    return 1 if res["problems"] else 0


def run(args) -> int:
    """Run `gmpo registry ACTION`."""
    from gmpo.runs.model_registry import ModelRegistry, RegistryError

    if not args.action or (args.action == "alias" and not getattr(args, "alias_action", None)):
        print("usage: gmpo registry {add,list,show,alias set,history,check} ... (see gmpo registry --help)",
              file=sys.stderr)
        return 2
    reg = ModelRegistry(args.registry)
    try:
        if args.action == "show":
            mv = reg.resolve(args.ref)
            print(json.dumps({**mv.to_dict(), "created_utc": _ts(mv.created)}, indent=2))
            return 0
        handler = {"add": _add, "list": _list, "alias": _alias_set, "history": _history, "check": _check}
        return handler[args.action](reg, args)
    except (RegistryError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        reg.close()
