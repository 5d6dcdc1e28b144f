"""The adapters of posenc.hf.FAMILIES: for every exporting family, on the tiny models of
tests/test_hf_export.py, the weights' names go to Hugging Face's and back to the same state dict
exactly, and the config goes to Hugging Face's and back to the same architecture (and the
transformers config back to the same one); for every family, on a tiny model of its own tests,
the importer's names reversed give back the Hugging Face state dict exactly, or are refused where
the import is more than a renaming; IMPORTERS and EXPORTERS are read-only views of FAMILIES."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import test_hf
import test_hf_alibi
import test_hf_cohere2
import test_hf_exaone4
import test_hf_gemma
import test_hf_gpt_neox
import test_hf_llama4
import test_hf_olmo
import test_hf_parallel
import test_hf_phi3
import test_hf_qwen3
import test_hf_qwen_vl
import test_hf_released
import test_hf_smollm3
import torch
from _hf_helpers import perturbed
from test_hf_export import CASES, STRUCTURE, one_norm, posenc_model

import posenc.hf.export
from posenc import GPT
from posenc.hf import EXPORTERS, FAMILIES, IMPORTERS, Family
from posenc.hf.family import comparable
from posenc.hf.writers import Unfit

transformers = pytest.importorskip("transformers")


#: model_type -> a tiny Hugging Face model of the family, as the family's own tests build it
HF_MODELS = {
    "gpt2": lambda: perturbed(
        transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=3, n_head=4)
        )
    ),
    "gpt_neox": lambda: test_hf_gpt_neox.hf_neox(),
    "llama": lambda: perturbed(test_hf.hf_causal_lm("llama")),
    "qwen2": lambda: perturbed(test_hf.hf_causal_lm("qwen2")),
    "mistral": lambda: perturbed(test_hf.hf_causal_lm("mistral")),
    "deepseek_v3": lambda: perturbed(test_hf.hf_deepseek(q_lora_rank=12)),
    "qwen3": lambda: test_hf_qwen3.hf_qwen3(),
    "smollm3": lambda: test_hf_smollm3.hf_smollm3(**test_hf_smollm3.CASES["biases"]),
    "gptj": lambda: test_hf_parallel.hf_model("gptj"),
    "phi": lambda: test_hf_parallel.hf_model("phi"),
    "phi3": lambda: test_hf_phi3.hf_phi3("longrope"),
    "cohere2": lambda: test_hf_cohere2.hf_cohere2(),
    "olmo2": lambda: test_hf_olmo.hf_model("olmo2"),
    "olmo3": lambda: test_hf_olmo.hf_model("olmo3"),
    "exaone4": lambda: test_hf_exaone4.hf_exaone4("hybrid"),
    "gemma2": lambda: test_hf_gemma.hf_model("gemma2"),
    "gemma3_text": lambda: test_hf_gemma.hf_model("gemma3"),
    "gemma3": lambda: test_hf_released.hf_released("Gemma-3-4B-it"),
    "llama4_text": lambda: test_hf_llama4.hf_llama4(),
    "bloom": lambda: test_hf_alibi.hf_model("bloom"),
    "mpt": lambda: test_hf_alibi.hf_model("mpt"),
    "qwen2_vl": lambda: test_hf_qwen_vl.hf_model("qwen2_vl"),
    "qwen2_5_vl": lambda: test_hf_qwen_vl.hf_model("qwen2_5_vl"),
    "qwen3_vl": lambda: test_hf_qwen_vl.hf_model("qwen3_vl"),
}


#: families whose import is more than a renaming, refused by the reversal (match): Gemma's gains
#: are imported as ``1 + w``; a model with a vision tower is no AutoModelForCausalLM of its config
NOT_RENAMINGS = {
    "gemma2": "computes 'ln_f.weight' from its weights",
    "gemma3_text": "computes 'ln_f.weight' from its weights",
    "gemma3": "computes 'ln_f.weight' from its weights",
    "qwen2_vl": "Unrecognized configuration class",
    "qwen2_5_vl": "Unrecognized configuration class",
    "qwen3_vl": "Unrecognized configuration class",
}


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_imported_names_reversed_give_back_the_hugging_face_state_dict(model_type: str) -> None:
    if model_type not in HF_MODELS:
        pytest.skip(f"no tiny {model_type} model here; its own test file checks its import")
    hf = HF_MODELS[model_type]()
    assert hf.config.model_type == model_type
    ours = GPT.from_hf(hf)
    if model_type in NOT_RENAMINGS:
        with pytest.raises(ValueError, match=NOT_RENAMINGS[model_type]):
            FAMILIES[model_type].state_dict_to_hf(ours, hf.config)
        return
    theirs = FAMILIES[model_type].state_dict_to_hf(ours, hf.config)
    expected = dict(hf.named_parameters(remove_duplicate=False))
    assert set(theirs) == set(expected)
    assert [k for k, v in theirs.items() if not torch.equal(v, expected[k])] == []


def case_model(case: str):
    """(the family the case exports to, its tiny posenc model with every parameter off its initial value)."""
    name, fields = CASES[case]
    model = posenc_model(fields, parallel="parallel" in case, structure=STRUCTURE.get(case))
    return name, one_norm(model) if name == "cohere2" else model


def test_every_exporting_family_has_a_case() -> None:
    assert {name for name, _ in CASES.values()} == set(EXPORTERS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_names_round_trip(case: str) -> None:
    name, model = case_model(case)
    family = FAMILIES[name]
    hf_config = family.config_to_hf(model.config)
    theirs = family.state_dict_to_hf(model, hf_config)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert set(theirs) == {k for k, _ in skeleton.named_parameters(remove_duplicate=False)}  # every parameter
    config, back = family.from_hf(SimpleNamespace(config=hf_config, state_dict=lambda: theirs))
    ours = model.state_dict()
    assert comparable(config) == comparable(model.config)
    assert [k for k in ours if not torch.equal(back[k], ours[k])] == []  # exactly
    extra = {k: v for k, v in back.items() if k not in ours}  # a bias posenc lacks is a zero one there
    assert all(k.endswith(".bias") and not v.any() for k, v in extra.items()), sorted(extra)


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trips(case: str) -> None:
    name, model = case_model(case)
    family = FAMILIES[name]
    hf_config = family.config_to_hf(model.config)
    assert hf_config.model_type == name
    config = family.config_from_hf(hf_config)
    assert comparable(config) == comparable(model.config)
    assert family.config_to_hf(config).to_diff_dict() == hf_config.to_diff_dict()


def test_importers_and_exporters_are_read_only_views_of_the_families(monkeypatch) -> None:
    assert list(IMPORTERS.items()) == [(k, f.importer) for k, f in FAMILIES.items()]
    assert list(EXPORTERS.items()) == [(k, f.config_writer) for k, f in FAMILIES.items() if f.exports]
    assert posenc.hf.export.EXPORTERS is EXPORTERS
    with pytest.raises(TypeError):
        IMPORTERS["toy"] = FAMILIES["gpt2"].importer  # type: ignore[index]
    with pytest.raises(KeyError):
        EXPORTERS["qwen2"]  # imported, not exported to
    monkeypatch.setitem(FAMILIES, "toy", Family(FAMILIES["gpt2"].importer, FAMILIES["gpt2"].config_writer))
    assert IMPORTERS["toy"] is FAMILIES["gpt2"].importer and list(EXPORTERS)[-1] == "toy"


def test_a_family_posenc_does_not_export_to_refuses_by_name() -> None:
    with pytest.raises(Unfit, match="does not export"):
        FAMILIES["qwen2"].config_to_hf(case_model("Llama, GQA, untied")[1].config)
