"""``posenc train --init-from`` a pretrained model (a Hugging Face folder here: a tiny llama-shaped
model with a byte-level tokenizer; a GGUF file goes through GPT.from_gguf the same way): its
architecture and tokenizer, a longer context and a RoPE schedule, the loss falling, and the export
back with its tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from posenc import GPT, GPTConfig
from posenc.cli import main
from posenc.data.tokenizers import PretrainedTokenizer, get_tokenizer
from posenc.train.run import build_spec
from posenc.train.runlog import read_log
from posenc.train.source import is_pretrained, load_source

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A Hugging Face folder: a tiny Llama and a byte-level tokenizer (256 bytes + an end token)."""
    folder = tmp_path_factory.mktemp("source")
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=32, vocab_size=320, bias=False,
        pe="rope", norm="rmsnorm", mlp="swiglu", rope_base=1e4,
    )  # fmt: skip
    GPT(config).eval().to_hf().save_pretrained(folder)
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))} | {"<eos>": 256}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(folder)
    return folder


def test_a_model_folder_is_a_pretrained_source_and_a_run_folder_is_not(source, tmp_path):
    assert is_pretrained(str(source)) and not is_pretrained(str(tmp_path)) and not is_pretrained(None)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "run.json").write_text("{}")
    assert not is_pretrained(str(tmp_path))


def test_the_run_is_the_sources_architecture_with_a_longer_context_and_a_schedule(source):
    scaling = {"rope_type": "linear", "factor": 2.0}
    spec = build_spec(
        "tiny", model={"pe": "rope", "block_size": 64, "rope_scaling": scaling}, train={"init_from": str(source)}
    )
    want = load_source(str(source)).config.replace(block_size=64)
    assert spec.model == want.with_encoding("rope", scaling={"max_position_embeddings": 64} | scaling)
    assert spec.train.tokenizer == str(source)
    tok = get_tokenizer(spec.train.tokenizer)
    assert (
        isinstance(tok, PretrainedTokenizer) and tok.eot == 256 and tok.decode(tok.encode("def f(): é")) == "def f(): é"
    )


def test_flags_that_would_change_the_architecture_are_refused(source):
    with pytest.raises(ValueError, match=r"only --block-size and --rope-scaling apply, got \['n_layer'\]"):
        build_spec("tiny", model={"n_layer": 3}, train={"init_from": str(source)})


def test_a_short_fine_tune_lowers_the_loss_and_exports_with_its_tokenizer(source, tmp_path):
    text = tmp_path / "corpus.jsonl"  # enough documents for the files split's 0.1% validation share
    text.write_text("".join(json.dumps({"text": f"the cat {i % 7} sat on the mat. " * 6}) + "\n" for i in range(2000)))
    out, hf, data = tmp_path / "run", tmp_path / "hf", tmp_path / "data"
    prepare = ["prepare", "--dataset", "files", "--data-files", str(text), "--tokenizer", str(source)]
    assert main([*prepare, "--out-dir", str(data)]) == 0  # in the source's tokenizer: a given --data-dir is not filled
    argv = ["train", "--init-from", str(source), "--preset", "tiny", "--block-size", "64", "--rope-scaling", "linear"]
    argv += [
        "--rope-factor",
        "2",
        "--data-files",
        str(text),
        "--data-dir",
        str(data),
        "--out-dir",
        str(out),
    ]
    argv += ["--max-iters", "12", "--eval-interval", "6", "--lr", "3e-3", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    evals = [r["val_loss"] for r in read_log(out) if r.get("kind") == "eval"]
    assert len(evals) >= 2 and evals[-1] < evals[0]
    assert main(["export", str(out), "--hf", str(hf)]) == 0
    config = json.loads((hf / "config.json").read_text())
    rope = config.get("rope_parameters") or config["rope_scaling"]  # transformers 5 / 4
    assert (rope["rope_type"], rope["factor"], config["max_position_embeddings"]) == ("linear", 2.0, 64)
    back = transformers.AutoTokenizer.from_pretrained(hf)
    assert back.encode("the cat", add_special_tokens=False) == get_tokenizer(str(source)).encode("the cat")
