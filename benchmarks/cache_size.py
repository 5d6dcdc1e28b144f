"""KV-cache size against sequence length for global, sliding and chunked layers.

Reads T - 1 tokens into a fresh cache in steps of 512, then decodes one token, and prints the bytes
the cache's tensors hold (keys, values, positions: ``numel * element_size``, not process memory)
for each model. A sliding layer holds its last ``window - 1`` keys, a chunked one its current
chunk's, a global one every key.

    python benchmarks/cache_size.py [--lengths 500 1000 2000 4000] [--window 256]
"""

from __future__ import annotations

import argparse

import torch

from posenc import GPT, GPTConfig, Mask


def cache_bytes(cache) -> int:
    tensors = [getattr(layer, name, None) for layer in cache.layers for name in ("k", "v", "kv", "positions")]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@torch.no_grad()
def measure(m: GPT, T: int, step: int = 512) -> int:
    idx = torch.randint(0, m.config.vocab_size, (1, T))
    cache = m.new_cache()
    for start in range(0, T - 1, step):
        m(idx[:, start : min(start + step, T - 1)], cache=cache, last_only=True)
    m(idx[:, T - 1 :], cache=cache, last_only=True)  # one decoding step
    assert cache.length == T
    return cache_bytes(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    W = args.window
    patterns = {
        "global": lambda i: Mask(),
        f"window {W}": lambda i: Mask(window=W),
        f"chunk {W}": lambda i: Mask(chunk=W),
        f"3 window {W} : 1 global": lambda i: Mask() if i % 4 == 3 else Mask(window=W),
    }
    block = max(args.lengths)
    print("RoPE GPT, 4 layers, 4 heads of 64, float32, batch 1; cache tensors' bytes after T tokens")
    print("| layers | " + " | ".join(f"T={T}" for T in args.lengths) + " |")
    print("|---|" + "---|" * len(args.lengths))
    for name, masks in patterns.items():
        config = GPTConfig.from_preset("tiny", pe="rope", n_layer=4, n_head=4, n_embd=256, block_size=block)
        torch.manual_seed(0)
        m = GPT(config.map_layers(lambda i, layer, masks=masks: layer.replace(mask=masks(i)))).eval()
        sizes = [measure(m, T) for T in args.lengths]
        print(f"| {name} | " + " | ".join(f"{s / 2**20:.2f} MiB" for s in sizes) + " |")


if __name__ == "__main__":
    main()
