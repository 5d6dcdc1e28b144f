"""Shared test settings.

Threads: see below. Hypothesis: the default profile keeps the suite fast on two CPU cores; run
``pytest --hypothesis-profile=thorough`` for a longer search. ``deadline=None`` because the first
call of a torch op can take far longer than the steady state, which is not a bug.
"""

from __future__ import annotations

import os
import sys

# One intra-op thread for the whole session, set before torch is first imported. Two reasons:
# the tests' models are tiny, so a second thread costs more in synchronisation than it saves on
# two cores; and the reliability tests fork the test process, which deadlocks in the child when
# the parent already runs an OpenMP thread pool.
os.environ["OMP_NUM_THREADS"] = "1"
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)

from hypothesis import settings  # noqa: E402

settings.register_profile("posenc", deadline=None, max_examples=25, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=1000, print_blob=True)
settings.load_profile("posenc")

