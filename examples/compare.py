"""Train every positional encoding under identical conditions, then compare them.

Each variant is trained by ``posenc train`` with the same data order, the same seeds and --
wherever two architectures share a parameter (its name and shape) -- the same initial values. The final
checkpoints are evaluated at 1x, 2x, 4x, 8x and 16x the training context and at every position within
it; ``posenc.report`` writes the tables, figures and the docs page from results.json alone.

    python examples/compare.py                                  # CPU preset: 16 variants x 3 seeds, ~2 h on 2 cores
    python examples/compare.py --quick                          # a smoke test, minutes
    python examples/compare.py --preset owt-16m                 # the study's runs on a GPU (48 x ~900M tokens)
    python examples/compare.py --preset cpu --render docs/results.md   # run, then write the docs page
    python examples/compare.py --render docs/results.md --from out/compare-cpu/results.json
    python examples/compare.py --study lr --render docs/results-lr.md                # and extension, synthetic

Outputs in --out (default out/compare-<preset>): runs/<variant>-s<seed>/ (each a train run folder,
plus eval.json), results.json (every number and the exact configuration), table.md (the study's
format), report.md and the figures. An interrupted sweep continues where it stopped when the same
command runs again. ``--study lr | extension | synthetic`` runs a named study (posenc.studies) in the same
--out, reusing the table's run folders, and writes <study>.json. ``posenc compare`` is the same command for an installed package; the logic is
in ``posenc.sweep`` (planning, training, collection) and ``posenc.report``.
"""

import sys

from posenc import sweep

if __name__ == "__main__":
    sys.exit(sweep.run(sys.argv[1:]))
