"""The studies of ``compare``, each rerun alone with ``compare --study NAME`` and each resumable
(finished runs are kept): ``table`` (every variant, the comparison itself), ``lr`` (learning-rate
sweep, then seeds at each variant's best rate), ``extension`` (RoPE context extension: zero-shot
schedules and short fine-tunes) and ``synthetic`` (a passkey-retrieval probe of length
generalisation) and ``real`` (a released model: loss past its context, zero-shot schedules, where
position lives). Each is ``run(sweep: posenc.jobs.Sweep) -> exit code``, writes
``<out>/<name>.json`` (the table: results.json), and :mod:`posenc.report` renders it.
"""

from __future__ import annotations

from collections.abc import Callable

from posenc.jobs import Sweep
from posenc.studies import extension, lr, real, synthetic, table

#: study name -> its run
STUDIES: dict[str, Callable[[Sweep], int]] = {
    "table": table.run,
    "lr": lr.run,
    "extension": extension.run,
    "synthetic": synthetic.run,
    "real": real.run,
}

__all__ = ["STUDIES"]
