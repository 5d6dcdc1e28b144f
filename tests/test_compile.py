"""The model under torch.compile's graph capture: no graph break for RoPE and its static schedules
in both layouts, and one graph for every sequence length once T is marked dynamic (dynamo only;
inductor's code generation takes minutes on this CPU and is exercised on GPU machines)."""

from __future__ import annotations

import pytest
import torch

from posenc import GPT, GPTConfig

SCHEDULES = {
    "default": None,
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "original_max_position_embeddings": 8,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_no_graph_break(schedule: str, layout: str) -> None:
    model = GPT(GPTConfig.from_preset("tiny", pe="rope", rope_scaling=SCHEDULES[schedule], rope_layout=layout)).eval()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randint(0, 256, (2, 16)))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_one_graph_for_every_length_when_t_is_dynamic() -> None:
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = GPT(GPTConfig.from_preset("tiny", pe="rope")).eval()
    compiled = torch.compile(model, backend=backend)
    for T in (8, 12, 20, 31):
        x = torch.randint(0, 256, (2, T))
        torch._dynamo.mark_dynamic(x, 1)
        logits, _ = compiled(x)
        torch.testing.assert_close(logits, model(x)[0])
    assert len(graphs) == 1
