"""Tokenize a pretraining corpus into train.bin / val.bin / meta.json (posenc.data.prepare).

    python examples/prepare_owt.py                                   # OpenWebText, GPT-2 BPE (the study)
    python examples/prepare_owt.py --dataset embedded --tokenizer bytes   # offline, seconds
    python examples/prepare_owt.py --data-files owt/*.jsonl          # a local copy, same split as the hub

Output goes to data/<dataset>-<tokenizer> unless --out-dir says otherwise. Rerunning with the
same inputs does nothing; an interrupted run is finished by running the same command again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from posenc.data import DEFAULT_FRACTIONS, DataError, prepare, read_meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
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
        choices=["gpt2", "bytes"],
        default="gpt2",
        help="gpt2: GPT-2 BPE (default); bytes: UTF-8 bytes, vocab 256, no files needed",
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
        args.out_dir = Path("data") / f"{args.dataset}-{args.tokenizer}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        print(f"prepare_owt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prepare_owt: interrupted; run the same command again to finish {args.out_dir}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
