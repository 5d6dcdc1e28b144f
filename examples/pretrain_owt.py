"""Pretrain a nanoGPT-sized GPT with a chosen positional encoding.

The reference study: a 16.03M-parameter GPT (4 layers, 4 heads, 256 channels, GPT-2 BPE) trained
on 10% of OpenWebText (~900M tokens) in fp16 with torch.compile and flash attention, once per
encoding. On a CUDA machine ``--preset owt-16m`` (the default there) is that run; on a CPU
``--preset cpu`` (the default there) trains a small byte-level model on the embedded corpus
(the Python standard library's own docs and sources) in about three minutes, with no network.

    python examples/pretrain_owt.py --pe rope                       # picks the preset for the device
    torchrun --nproc_per_node=8 examples/pretrain_owt.py --pe rope  # DDP: same global batch, split by rank
    python examples/pretrain_owt.py --out-dir out/cpu-rope --resume # continue a run (from step 0 if it has no checkpoint)
    python examples/pretrain_owt.py --pe rope                       # the same command again continues it
    python examples/pretrain_owt.py --init-from out/cpu-rope --block-size 512 --max-iters 100 \\
        --out-dir out/cpu-rope-512                                  # fine-tune a trained run at a longer context

Outputs in --out-dir: run.json (the run's spec, written first), log.jsonl (one record per step and per evaluation), curves.png,
summary.json (final losses, tokens, wall time, the architecture built, samples), samples.txt and
checkpoints (ckpt-*.pt + checkpoints.json). See docs/training.md. ``posenc train`` is the same
command for an installed package.
"""

import os
import sys

from posenc.cli import guarded, train_parser
from posenc.train import handle_stop_signals, train
from posenc.train.args import plan_from_args


def main() -> int:
    args = train_parser().parse_args()  # every flag: --help
    world = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's; 1 for a plain run
    spec, saved = plan_from_args(args, world_size=world)  # the preset and the flags, or the folder's saved run
    with handle_stop_signals() as stop:  # SIGTERM/SIGINT: checkpoint at the next step, then exit
        result = train(
            spec.model,
            spec.train,
            resume=saved,  # a bare --resume: the folder's own run
            overwrite=args.overwrite,  # else a folder of the same run continues, another run is refused
            stop=stop,
            stop_at=args.stop_at,
            progress=not args.no_progress,
        )
    return result["exit_code"] if result and result.get("stopped") else 0


if __name__ == "__main__":
    sys.exit(guarded(main))
