"""Pretrain a nanoGPT-sized GPT with a chosen positional encoding.

The reference study: a 16.03M-parameter GPT (4 layers, 4 heads, 256 channels, GPT-2 BPE) trained
on 10% of OpenWebText (~900M tokens) in fp16 with torch.compile and flash attention, once per
encoding. On a CUDA machine ``--preset owt-16m`` (the default there) is that run; on a CPU
``--preset cpu`` (the default there) trains a small byte-level model on the embedded corpus
(the Python standard library's own docs and sources) in about three minutes, with no network.

    python examples/pretrain_owt.py --pe rope                       # picks the preset for the device
    torchrun --nproc_per_node=8 examples/pretrain_owt.py --pe rope  # DDP: same global batch, split by rank
    python examples/pretrain_owt.py --out-dir out/cpu-rope --resume # continue a run (from step 0 if it has no checkpoint)
    python examples/pretrain_owt.py --pe rope --resume              # the same command starts or continues it
    python examples/pretrain_owt.py --init-from out/cpu-rope --block-size 512 --max-iters 100 \\
        --out-dir out/cpu-rope-512                                  # fine-tune a trained run at a longer context

Outputs in --out-dir: run.json (the run's spec, written first), log.jsonl (one record per step and per evaluation), curves.png,
summary.json (final losses, tokens, wall time, the architecture built, samples), samples.txt and
checkpoints (ckpt-*.pt + checkpoints.json). See docs/training.md. ``posenc train`` is the same
command for an installed package.
"""

import sys

from posenc.cli import run_train, train_parser

PROG = "python examples/pretrain_owt.py"


def main() -> int:
    # every flag: --help; SIGTERM/SIGINT checkpoint at the next step, then exit; a user error is one line
    return run_train(train_parser(PROG).parse_args(), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
