"""The counting probe of the synthetic study: count what matters, not tokens.

The task of CoPE's paper (Golovneva et al. 2024; its generator ``count_data_gen.py`` in
facebookresearch/RAM, ``projects/cope/scripts``), in tokens: a program of statements over
``N_VARS`` variables -- ``v = 0 ;`` (set), ``v ++ ;`` (increment) and ``pass ;`` (a no-op), drawn with
the generator's weights 1 : 7 : 50, increments only of a variable already set and never past
``MAX_VAL`` -- then ``print v`` and the value. The model must count the increments of one variable
since it was last set, among many no-ops: positions that count the relevant tokens help, positions
that count all tokens do not. Sequences are filled to their length with no-ops; the loss and the
accuracy are on the answer token only (chance about 1 / (MAX_VAL + 1)).

Token ids: the variables, then ``=0``, ``++``, ``pass``, ``print``, then the values 0..MAX_VAL.
"""

from __future__ import annotations

import torch
from torch import Tensor

N_VARS, MAX_VAL = 3, 10
SET, INC, PASS, PRINT = N_VARS, N_VARS + 1, N_VARS + 2, N_VARS + 3
VALUE0 = N_VARS + 4  # the token of value 0
VOCAB = VALUE0 + MAX_VAL + 1
WEIGHTS = (1.0, 7.0, 50.0)  # set, increment, no-op: the generator's OP_WEIGHTS
MIN_LEN = 8


def _program(length: int, gen: torch.Generator) -> tuple[list[int], int]:
    """One sequence of ``length`` tokens (the last is the answer) and the answer's value."""
    body = length - 3  # room before "print v value"
    for _ in range(1000):
        tokens: list[int] = []
        values: dict[int, int] = {}
        while len(tokens) < body:
            op = int(torch.multinomial(torch.tensor(WEIGHTS), 1, generator=gen))
            var = int(torch.randint(0, N_VARS, (1,), generator=gen))
            room = body - len(tokens)
            if op == 0 and room >= 2:
                tokens += [var, SET]
                values[var] = 0
            elif op == 1 and room >= 2 and values:
                var = list(values)[var % len(values)]
                if values[var] < MAX_VAL:
                    tokens += [var, INC]
                    values[var] += 1
            else:
                tokens.append(PASS)
        if values:
            var = list(values)[int(torch.randint(0, len(values), (1,), generator=gen))]
            return tokens + [PRINT, var, VALUE0 + values[var]], values[var]
    raise ValueError(f"no program of {length} tokens set a variable in 1000 draws")


def counting_batch(batch: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch`` programs of ``length`` tokens: (tokens (B, length), targets (B, length), -1 but at the
    answer, predicted from the printed variable)."""
    if length < MIN_LEN:
        raise ValueError(f"counting programs need at least {MIN_LEN} tokens, got length={length}")
    rows = [_program(length, generator)[0] for _ in range(batch)]
    tokens = torch.tensor(rows)
    targets = torch.full_like(tokens, -1)
    targets[:, -2] = tokens[:, -1]
    return tokens, targets


def majority_accuracy(length: int, samples: int = 2000, seed: int = 0) -> float:
    """The accuracy at ``length`` of always answering the most common value: the floor a model that
    ignores the program reaches (the capped value ``MAX_VAL`` grows common as programs grow)."""
    gen = torch.Generator().manual_seed(seed)
    answers = torch.tensor([_program(length, gen)[1] for _ in range(samples)])
    return torch.bincount(answers).max().item() / samples
