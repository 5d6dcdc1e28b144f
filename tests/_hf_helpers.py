"""Shared by the Hugging Face family tests: a model with every parameter moved off its initial value
(norm gains start at 1 and biases at 0, which would hide a wrong mapping), and the checks each
family runs against it."""

from __future__ import annotations

import torch

from posenc import GPT


def perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def assert_logits_match(ours: GPT, hf: torch.nn.Module, vocab: int, T: int, atol: float = 2e-4) -> None:
    idx = torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=0, atol=atol)


def assert_greedy_generation_equal(ours: GPT, hf: torch.nn.Module, vocab: int, new: int = 20) -> None:
    prompt = torch.randint(0, vocab, (1, 5), generator=torch.Generator().manual_seed(2))
    expected = hf.generate(prompt, max_new_tokens=new, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, new, temperature=0), expected)


def assert_qk_norm_eps_carried(hf: torch.nn.Module, vocab: int, T: int = 24) -> None:
    """A family's ``rms_norm_eps``, shared by its QK-norm, reaches posenc's ``qk_norm_eps``: logits
    match at a large eps (0.1, so that it shows), and stop matching when only the QK-norms' eps is
    put back to the default -- the check that would catch a QK-norm ignoring it."""
    ours = GPT.from_hf(hf).eval()
    assert_logits_match(ours, hf, vocab, T)
    norms = [b.attn.qk_norm for b in ours.blocks if b.attn.qk_norm is not None]
    assert norms and all(n.q_norm.eps == n.k_norm.eps == hf.config.get_text_config().rms_norm_eps for n in norms)
    for n in norms:
        n.q_norm.eps = n.k_norm.eps = 1e-6
    idx = torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max() > 1e-3
