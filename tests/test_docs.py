"""The docs say what the code does: the encoding names and layer codes they list are the library's,
their counts are the library's, and the report writes each encoding's name one way."""

from __future__ import annotations

import re
from pathlib import Path

from posenc import VARIANTS
from posenc.encodings import codes
from posenc.studies.table import DEFAULT_VARIANTS
from posenc.variants import label

ROOT = Path(__file__).resolve().parents[1]


def between(text: str, start: str, end: str) -> str:
    text = " ".join(text.split())
    i = text.index(start)
    return text[i : text.index(end, i)]


def names(span: str) -> set[str]:
    return set(re.findall(r"`([a-z0-9_]+)`", span))


def test_the_readme_pe_list_is_posenc_variants():
    span = between((ROOT / "README.md").read_text(), "`--pe` takes", "(all of `posenc.VARIANTS`)")
    assert names(span) == set(VARIANTS)


def test_training_md_pe_list_and_layer_codes_are_the_library_s():
    text = (ROOT / "docs" / "training.md").read_text()
    assert names(between(text, "`--pe` takes every name of `posenc.VARIANTS`", ");")) == set(VARIANTS)
    listed = dict(re.findall(r"`([A-Z])` ([^,;`]+)", between(text, "(codes:", "lower case")))
    assert set(listed) == set(codes()), sorted(set(codes()) ^ set(listed))


def test_training_md_counts_the_default_variants():
    text = " ".join((ROOT / "docs" / "training.md").read_text().split())
    counts = re.findall(r"(\d+) variants x (\d+) seeds = (\d+) runs", text)
    assert counts
    for variants, seeds, runs in counts:
        assert int(variants) == len(DEFAULT_VARIANTS) and int(variants) * int(seeds) == int(runs)


def test_the_report_writes_each_encoding_name_one_way():
    """RoPE, NoPE, RNoPE as in every page's prose, beside ALiBi and FoX: never ROPE or NOPE."""
    for name in VARIANTS:
        text = label(name)
        assert not re.search(r"ROPE|NOPE", text), (name, text)
        for word in re.findall(r"[A-Za-z]*(?:rope|nope)\b", text, re.IGNORECASE):
            assert word in ("RoPE", "NoPE", "RNoPE"), (name, text)
    for page in ("results.md", "results-lr.md", "results-extension.md", "results-synthetic.md"):
        assert not re.search(r"GPT R?(ROPE|NOPE)", (ROOT / "docs" / page).read_text()), page
