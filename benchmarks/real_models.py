"""posenc on a real pretrained model against Hugging Face and llama.cpp (the figures of docs/models.md).

    python benchmarks/real_models.py --model smollm2-135m            # T=2048 logits, 8192-token loss
    python benchmarks/real_models.py --model gemma3-270m --T 1024 --loss-T 1024
    python benchmarks/real_models.py --model smollm2-135m --llama-cpp  # also llama.cpp, 1024 tokens

The model comes from ``posenc.pretrained.fetch``; the text is the standard library's ``inspect.py``
(and the following files of the standard library when it is too short), in the model's tokenizer.

- Hugging Face: transformers' own GGUF load of the same file, so the same dequantized weights in
  an independent implementation. Logits at ``--T`` tokens (max |diff|), against Hugging Face as
  it is and against Hugging Face with its rotation angles computed exactly (in float64: it
  multiplies positions by float32 frequencies, which drift at large positions); the loss over
  ``--loss-T`` tokens (relative difference); cached greedy generation of ``--new`` tokens on three
  prompts (equal or not, and where they part).
- llama.cpp (``--llama-cpp``, needs ``llama-cpp-python``, docs/models.md says how to build it):
  it multiplies the quantized weights natively, so the comparison is statistical: the loss over
  ``--cpp-T`` tokens, and top-1 agreement with posenc, overall and where posenc's top two logits
  are more than 0.5 and 1 apart.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from posenc import GPT
from posenc.pretrained import MODELS, fetch, hf_model_from_gguf, load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"


def source_tokens(tok, n: int) -> list[int]:
    """``n`` tokens of Python source: inspect.py, then more standard-library files as needed."""
    first = [tok.bos_token_id] if tok.add_bos else []
    ids, files = first, [Path(inspect.__file__), *sorted(Path(inspect.__file__).parent.glob("*.py"))]
    for f in files:
        ids += tok.encode(f.read_text(encoding="utf-8"))
        if len(ids) >= n:
            return ids[:n]
    raise ValueError(f"the standard library has fewer than {n} tokens")


def exact_angles(hf: torch.nn.Module) -> None:
    """Make Hugging Face's rotary embedding compute its angles in float64 from exact frequencies
    (default RoPE only; per layer type for Gemma 3)."""
    rot, cfg = hf.model.rotary_emb, hf.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def forward(x, position_ids, layer_type=None):
        params = cfg.rope_parameters if layer_type is None else cfg.rope_parameters[layer_type]
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"exact_angles handles default RoPE only, got {params}")
        inv = 1.0 / params["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        emb = (position_ids[..., None].double() * inv).repeat(1, 1, 2)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    rot.forward = forward


def forward_figures(ours: GPT, hf: torch.nn.Module, ids: list[int], T: int) -> dict:
    w = torch.tensor([ids[: T + 1]])
    with torch.no_grad():
        logits, loss = ours(w[:, :-1], w[:, 1:])
        ref = hf(w[:, :-1]).logits
        saved = hf.model.rotary_emb.forward
        exact_angles(hf)
        ref_exact = hf(w[:, :-1]).logits
        hf.model.rotary_emb.forward = saved
    ref_loss = F.cross_entropy(ref[0], w[0, 1:])
    return {
        "T": T,
        "max_abs_logit_diff": (logits - ref).abs().max().item(),
        "max_abs_logit_diff_exact_angles": (logits - ref_exact).abs().max().item(),
        "loss": loss.item(),
        "hf_loss": ref_loss.item(),
        "loss_rel_diff": abs(loss.item() - ref_loss.item()) / ref_loss.item(),
    }


def loss_figures(ours: GPT, hf: torch.nn.Module, ids: list[int], T: int) -> dict:
    w = torch.tensor([ids[: T + 1]])
    with torch.no_grad():
        loss = ours(w[:, :-1], w[:, 1:])[1].item()
        ref = F.cross_entropy(hf(w[:, :-1]).logits[0], w[0, 1:]).item()
    return {"T": T, "loss": loss, "hf_loss": ref, "loss_rel_diff": abs(loss - ref) / ref}


def greedy_figures(ours: GPT, hf: torch.nn.Module, tok, ids: list[int], new: int) -> list[dict]:
    first = [tok.bos_token_id] if tok.add_bos else []
    prompts = [first + tok.encode("Once upon a time, in a small village by the sea,"), ids[:40]]
    if tok.hf.chat_template:
        chat = [{"role": "user", "content": "Write a Python function that reverses a list."}]
        prompts.append(tok.encode(tok.hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)))
    else:
        prompts.append(first + tok.encode("def fibonacci(n):"))
    rows = []
    for p in prompts:
        prompt = torch.tensor([p])
        a = ours.generate(prompt, new, temperature=0)[0, len(p) :].tolist()
        stop = list(ours.eos_token_id)
        b = hf.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=stop)[0, len(p) :].tolist()
        parted = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        rows.append({"prompt": tok.decode(p), "equal": a == b, "tokens": len(a), "parted_at": parted})
    return rows


def llama_cpp_figures(path: Path, ours: GPT, ids: list[int], T: int) -> dict:
    from llama_cpp import Llama

    w = ids[: T + 1]
    llm = Llama(model_path=str(path), n_ctx=T + 8, n_batch=512, logits_all=True, n_threads=2, verbose=False)
    llm.eval(w[:-1])
    cpp = torch.tensor(llm.scores[:T], dtype=torch.float32)  # (T, V)
    with torch.no_grad():
        logits = ours(torch.tensor([w[:-1]]))[0][0]
    targets = torch.tensor(w[1:])
    top2 = logits.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    agree = logits.argmax(-1) == cpp.argmax(-1)
    return {
        "T": T,
        "llama_cpp_version": __import__("llama_cpp").__version__,
        "loss_llama_cpp": F.cross_entropy(cpp, targets).item(),
        "loss_posenc": F.cross_entropy(logits, targets).item(),
        "top1_agreement": agree.float().mean().item(),
        "top1_agreement_gap_over_0.5": agree[gap > 0.5].float().mean().item(),
        "positions_gap_over_0.5": int((gap > 0.5).sum()),
        "top1_agreement_gap_over_1": agree[gap > 1].float().mean().item(),
        "positions_gap_over_1": int((gap > 1).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/real_models.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    p.add_argument("--T", type=int, default=2048, help="tokens of the logits comparison")
    p.add_argument("--loss-T", type=int, default=8192, help="tokens of the loss comparison (0: skip)")
    p.add_argument("--new", type=int, default=64, help="greedy tokens per prompt (0: skip)")
    p.add_argument("--llama-cpp", action="store_true", help="also compare with llama.cpp")
    p.add_argument("--cpp-T", type=int, default=1024, help="tokens of the llama.cpp comparison")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: results/real_models_<model>.json)")
    args = p.parse_args(argv)
    path = fetch(args.model)
    t0 = time.perf_counter()
    tok = load_tokenizer(path)
    t1 = time.perf_counter()
    ours = GPT.from_gguf(path)
    t2 = time.perf_counter()
    hf = hf_model_from_gguf(path)
    t3 = time.perf_counter()
    ids = source_tokens(tok, max(args.T, args.loss_T, args.cpp_T) + 1)
    out = {
        "model": args.model,
        "file": path.name,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "seconds": {"load_tokenizer": t1 - t0, "from_gguf": t2 - t1, "hf_from_gguf": t3 - t2},
    }
    print(json.dumps(out), flush=True)
    out["forward"] = forward_figures(ours, hf, ids, args.T)
    print(json.dumps(out["forward"]), flush=True)
    if args.loss_T:
        out["loss"] = loss_figures(ours, hf, ids, args.loss_T)
        print(json.dumps(out["loss"]), flush=True)
    if args.new:
        out["greedy"] = greedy_figures(ours, hf, tok, ids, args.new)
        print(json.dumps(out["greedy"]), flush=True)
    if args.llama_cpp:
        out["llama_cpp"] = llama_cpp_figures(path, ours, ids, args.cpp_T)
        print(json.dumps(out["llama_cpp"]), flush=True)
    dest = args.out or RESULTS / f"real_models_{args.model}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
