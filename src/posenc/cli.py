"""The ``posenc`` command: ``posenc prepare | train | compare | eval`` (also ``python -m posenc``).

Each subcommand parses flags into the library's own objects and calls one library function:
``prepare`` -> :func:`posenc.data.prepare`, ``train`` -> :func:`posenc.train.train`, ``compare``
-> :func:`posenc.sweep.main`, ``eval`` -> :func:`posenc.evaluate.evaluate_checkpoint`. User errors
print one line and exit 2 (3 for a non-finite loss), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from posenc.train.args import configs_from_args, guarded, run_train, train_parser  # the train command
from posenc.train.config import resolve_device

__all__ = ["configs_from_args", "guarded", "main", "run_train", "train_parser"]

# -- prepare, eval ---------------------------------------------------------------------------------


def prepare_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Tokenize a corpus into train.bin / val.bin / meta.json shards.")
    p.add_argument(
        "--dataset",
        choices=["owt", "files", "embedded"],
        default="owt",
        help="owt: OpenWebText via HF datasets; files: --data-files; embedded: the offline stdlib corpus",
    )
    p.add_argument(
        "--data-files", nargs="+", default=None, help="local jsonl/json/parquet/txt files with a 'text' field"
    )
    p.add_argument("--tokenizer", choices=["gpt2", "bytes"], default="gpt2", help="GPT-2 BPE (default) or UTF-8 bytes")
    p.add_argument("--out-dir", type=Path, default=None, help="output folder (default: data/<dataset>-<tokenizer>)")
    p.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: CPU count, at most 8)")
    p.add_argument("--seed", type=int, default=2357, help="seed of the document shuffle that defines the split")
    p.add_argument(
        "--train-fraction", type=float, default=None, help="fraction of documents in train (default: the source's)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=None, help="fraction of documents in val (default: the source's)"
    )
    p.add_argument("--dtype", choices=["auto", "uint16", "uint32"], default="auto", help="shard dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def run_prepare(args: argparse.Namespace) -> int:
    from posenc.data import prepare

    def go() -> int:
        out = args.out_dir or Path(f"data/{args.dataset}-{args.tokenizer}")
        kwargs = {k: getattr(args, k) for k in ("train_fraction", "val_fraction") if getattr(args, k) is not None}
        folder = prepare(
            out,
            source=args.dataset,
            data_files=args.data_files,
            tokenizer=args.tokenizer,
            num_proc=args.num_proc,
            seed=args.seed,
            dtype=args.dtype,
            progress=not args.no_progress,
            **kwargs,
        )
        print(f"prepared {folder}")
        return 0

    return guarded(go)


def eval_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Length extrapolation and per-position loss of a run's latest checkpoint."
    )
    p.add_argument("run_dir", help="a run folder written by posenc train")
    p.add_argument(
        "--multipliers", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="evaluation contexts, in training contexts"
    )
    p.add_argument("--windows", type=int, default=16, help="validation windows of the largest context")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", default=None, help="prepared shards (default: the run's own)")
    return p


def run_eval(args: argparse.Namespace) -> int:
    from posenc.evaluate import evaluate_checkpoint

    def go() -> int:
        result = evaluate_checkpoint(
            args.run_dir,
            windows=args.windows,
            device=resolve_device(args.device),
            multipliers=tuple(args.multipliers),
            data_dir=args.data_dir,
        )
        print(json.dumps({"extrapolation": result["extrapolation"], "eval_tokens": result["eval_tokens"]}, indent=1))
        return 0

    return guarded(go)


# -- the command -------------------------------------------------------------------------------------

COMMANDS = {
    "prepare": "tokenize a corpus into shards",
    "train": "pretrain a GPT",
    "compare": "train and compare every encoding",
    "eval": "evaluate a run at 1x-16x its context",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = (
            "usage: posenc {"
            + ",".join(COMMANDS)
            + "} ...\n\n"
            + "\n".join(f"  {k:8} {v}" for k, v in COMMANDS.items())
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"posenc: unknown command {argv[0]!r}\n{usage}", file=sys.stderr)
            return 2
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    prog = f"posenc {command}"
    if command == "train":
        return run_train(train_parser(prog).parse_args(rest))
    if command == "prepare":
        return run_prepare(prepare_parser(prog).parse_args(rest))
    if command == "eval":
        return run_eval(eval_parser(prog).parse_args(rest))
    from posenc import sweep

    return sweep.run(rest, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
