"""Training-step throughput of the GPT per positional-encoding variant, beside a plain
nanoGPT-style model (learned absolute positions) defined here with the same dimensions.

    python benchmarks/bench_train.py            # cpu-small (eager + compiled) and owt-16m (eager)
    python benchmarks/bench_train.py --quick    # cpu-small only, fewer repeats
    python benchmarks/bench_train.py --device cuda

One step = forward, loss.backward(), AdamW step, zero_grad -- what examples/pretrain_owt.py
does per iteration. Steps of all models are interleaved round-robin and repeated, so load from
other processes lands on all of them alike; tokens/s comes from the median step. Ratios are
between medians of this run. ``compile warm-up`` is the wall time of the first compiled steps.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from posenc import GPT, PRESETS, VARIANTS, GPTConfig  # noqa: E402

# -- the baseline: nanoGPT's model.py (karpathy/nanoGPT), without generate/from_pretrained ----------


@dataclass
class NanoGPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's own, from before torch had bias=False)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoCausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NanoBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = NanoCausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = NanoMLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class NanoGPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([NanoBlock(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        device = idx.device
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra_args = dict(fused=True) if fused_available and device_type == "cuda" else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)


# -- the benchmark --------------------------------------------------------------------------------

SETTINGS = {
    # name: (preset, batch size, sequence length)
    "cpu-small": ("cpu-small", 16, 128),
    "owt-16m": ("owt-16m", 1, 1024),
    "tiny": ("tiny", 2, 16),
}


def build_models(preset: str, device) -> dict[str, nn.Module]:
    sizes = PRESETS[preset]
    # nanoGPT's one ``bias`` flag: the preset's attention has biases or not (its parts say which)
    bias = GPTConfig.from_preset(preset).layers[0].attention.qkv_bias
    dims = {k: sizes[k] for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout")}
    models: dict[str, nn.Module] = {"nanoGPT baseline": NanoGPT(NanoGPTConfig(**dims, bias=bias))}
    for name in VARIANTS:
        if name != "rnope_swa":  # below, with this benchmark's window
            models[name] = GPT(GPTConfig.from_preset(preset, pe=name))
    window = max(1, sizes["block_size"] // 4)
    models["rnope-swa"] = GPT(GPTConfig.from_preset(preset, layer_pattern="rrrN", sliding_window=window))
    return {name: m.to(device) for name, m in models.items()}


def make_step(model, batch, device, amp_dtype):
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    idx, targets = batch
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext

    def step():
        with amp():
            _, loss = model(idx, targets)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser("bench_train", __doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None)
    p.add_argument(
        "--compile-settings",
        nargs="*",
        default=None,
        help="settings that also run compiled (default: all on CUDA, cpu-small on CPU)",
    )
    p.add_argument(
        "--compile-models",
        nargs="*",
        default=None,
        help="models that run compiled besides the baseline (default: all on CUDA; on CPU "
        "absolute, rope, nope, qknorm, rnope; with --quick rope)",
    )
    args = p.parse_args(argv)
    device = common.setup(args)
    cuda = device.type == "cuda"
    if args.smoke:
        settings, compiled_in, repeats = ["tiny"], [], 1
    else:
        settings = args.settings or (["cpu-small"] if args.quick else ["cpu-small", "owt-16m"])
        if cuda and args.settings is None:
            settings = ["owt-16m"]
        compiled_in = (
            args.compile_settings if args.compile_settings is not None else (settings if cuda else ["cpu-small"])
        )
        repeats = args.repeats or (3 if args.quick else 5)
    amp_dtype = torch.float16 if cuda else None
    results, rows = [], []
    for setting in settings:
        preset, B, T = SETTINGS[setting]
        if cuda and setting == "owt-16m":
            B = 16
        vocab = PRESETS[preset]["vocab_size"]
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, vocab, (B, T + 1), generator=g).to(device)
        batch = (data[:, :-1].contiguous(), data[:, 1:].contiguous())  # as nanoGPT's get_batch
        modes = ["eager"] + (["compiled"] if setting in compiled_in else [])
        for mode in modes:
            torch.manual_seed(0)
            models = build_models(preset, device)
            keep = args.compile_models
            if keep is None and not cuda:  # each compile costs 10-30 s on a small CPU: the rows the bars need
                keep = ["rope"] if args.quick else ["absolute", "rope", "nope", "qknorm", "rnope"]
            if mode == "compiled" and keep:  # each compile costs a minute on a small CPU
                models = {k: v for k, v in models.items() if k in keep or k == "nanoGPT baseline"}
            warm = {}
            steps = {}
            for name, model in models.items():
                model.train()
                if mode == "compiled":
                    model = torch.compile(model)
                steps[name] = make_step(model, batch, device, amp_dtype)
                t0 = time.perf_counter()
                for _ in range(2 if mode == "compiled" else 1):  # compile happens in the first steps
                    steps[name]()
                common.sync(device)
                warm[name] = time.perf_counter() - t0
            n = min(repeats, 3) if setting == "owt-16m" and not cuda else repeats  # ~2 s a step on 2 CPU cores
            times = common.time_interleaved(steps, repeats=n, warmup=0, device=device)
            memory = {name: common.peak_memory_bytes(f, device) for name, f in steps.items()}
            med = {name: common.stats(ts)["median_ms"] for name, ts in times.items()}
            base_ms, abs_ms = med["nanoGPT baseline"], med.get("absolute")
            for name, ts in times.items():
                s = common.stats(ts)
                tps = B * T / (s["median_ms"] * 1e-3)
                row = {
                    "setting": setting,
                    "preset": preset,
                    "B": B,
                    "T": T,
                    "mode": mode,
                    "model": name,
                    **s,
                    "tokens_per_s": tps,
                    "x_baseline": base_ms / s["median_ms"],
                    "x_absolute": abs_ms / s["median_ms"] if abs_ms else None,
                    "peak_bytes": memory[name],
                    "compile_warmup_s": warm[name] if mode == "compiled" else None,
                    "params": sum(p.numel() for p in models[name].parameters()),
                }
                results.append(row)
                rows.append(
                    [
                        setting,
                        mode,
                        name,
                        s["median_ms"],
                        tps,
                        row["x_baseline"],
                        row["x_absolute"],
                        common.mib(memory[name]),
                        row["compile_warmup_s"],
                    ]
                )
            print(f"done {setting} {mode}", file=sys.stderr, flush=True)
            del models, steps

    print(f"\n## Training step ({device}, {'fp16 autocast' if cuda else 'fp32'}, {repeats} interleaved repeats)\n")
    print(
        common.markdown_table(
            [
                "setting",
                "mode",
                "model",
                "median ms/step",
                "tokens/s",
                "x nanoGPT baseline",
                "x absolute",
                "peak MiB",
                "compile warm-up s",
            ],
            rows,
        )
    )
    bars = bar_check(results)
    for line in bars:
        print(line)
    payload = {
        "benchmark": "bench_train",
        "machine": common.machine_info(device),
        "argv": sys.argv[1:] if argv is None else argv,
        "dtype": "fp16 autocast" if cuda else "fp32",
        "repeats": repeats,
        "results": results,
        "bars": bars,
    }
    common.write_json(args.out, payload)
    return payload


def bar_check(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        tag = f"{r['setting']} {r['mode']}"
        if r["model"] == "absolute":
            ok = r["x_baseline"] >= 1.0
            out.append(
                f"bar: {tag}: absolute = {r['x_baseline']:.3f}x nanoGPT baseline tokens/s (need >= 1.0): {'PASS' if ok else 'MISS'}"
            )
        elif r["model"] in ("rope", "nope", "qknorm", "rnope", "rnope-swa") and r["x_absolute"] is not None:
            ok = r["x_absolute"] >= 0.95
            out.append(
                f"bar: {tag}: {r['model']} = {r['x_absolute']:.3f}x absolute tokens/s (need >= 0.95): {'PASS' if ok else 'MISS'}"
            )
    return out


if __name__ == "__main__":
    main()
