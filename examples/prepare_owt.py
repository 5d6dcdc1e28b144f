"""Tokenize a pretraining corpus into train.bin / val.bin / meta.json (posenc.data.prepare).

    python examples/prepare_owt.py                                   # OpenWebText, GPT-2 BPE (the study)
    python examples/prepare_owt.py --dataset embedded --tokenizer bytes   # offline, seconds
    python examples/prepare_owt.py --data-files owt/*.jsonl          # a local copy, same split as the hub

Output goes to data/<dataset>-<tokenizer> unless --out-dir says otherwise. Rerunning with the
same inputs does nothing; an interrupted run is finished by running the same command again.
"""

import sys

from posenc.cli import run_prepare


def main(argv: list[str] | None = None) -> int:
    return run_prepare(argv, prog="prepare_owt")  # every flag: --help


if __name__ == "__main__":
    sys.exit(main())
