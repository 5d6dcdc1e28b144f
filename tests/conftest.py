"""Shared test settings.

Hypothesis: the default profile keeps the suite fast on two CPU cores; run
``pytest --hypothesis-profile=thorough`` for a longer search. ``deadline=None`` because the first
call of a torch op can take far longer than the steady state, which is not a bug.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("posenc", deadline=None, max_examples=25, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=1000, print_blob=True)
settings.load_profile("posenc")

