"""Reports of a positional-encoding comparison, built from its results dict (``results.json``)
alone: statistics over seeds (:mod:`~posenc.report.stats`), figures
(:mod:`~posenc.report.figures`, needs matplotlib), the markdown page
(:mod:`~posenc.report.markdown`) and its computed discussion (:mod:`~posenc.report.claims`).

    results = json.loads(Path("docs/results/results.json").read_text())
    render_page(results, "docs/results.md", "docs/results/results.json")
"""

from posenc.report.claims import discussion
from posenc.report.figures import FIGURES, plot_all
from posenc.report.markdown import UNITS, printable, render_markdown, render_page, study_table, write_outputs
from posenc.report.stats import (
    PAIRS,
    STUDY,
    aggregate,
    compare_pairs,
    early_late,
    fmt_diff,
    fmt_spread,
    kv_cache_bytes,
    merge_results,
    paired_diff,
    qk_norm_readings,
    spread,
    study_comparison,
)

__all__ = [
    "FIGURES",
    "PAIRS",
    "STUDY",
    "UNITS",
    "aggregate",
    "compare_pairs",
    "discussion",
    "early_late",
    "fmt_diff",
    "fmt_spread",
    "kv_cache_bytes",
    "merge_results",
    "paired_diff",
    "qk_norm_readings",
    "plot_all",
    "printable",
    "render_markdown",
    "render_page",
    "spread",
    "study_comparison",
    "study_table",
    "write_outputs",
]
