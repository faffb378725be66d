"""Which computation scores the choices of a ``select``: the select plan at token level.

A choice's likelihood is the sum of its tokens' log-probabilities after the program's text (the *prefix*). The
prefix is computed once, by a request that also returns the next-token log-probabilities of every choice's
first token (``token_ids_logprob``), so

* a choice of one token needs no request of its own;
* a longer choice is one *row*, ``prefix + choice`` with ``logprob_start_len = len(prefix)``: it takes the whole
  prefix from the cache and computes only the choice's tokens;
* a choice whose tokenization merges into the prefix's last token (``prefix + choice`` does not start with the
  prefix's tokens) is a row scored from the first token that differs, as is every choice when the backend cannot
  return next-token log-probabilities (``next_token=False``) or the prefix is empty.

`ChoiceScoring.plan` decides this from the token ids; `ChoiceScoring.conditional` puts the returned entries
back together, one list per choice covering exactly the choice's tokens. Both the backends' scorer
(`backends.scoring`) and the engine's program requests (`runtime.program_run`) use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from sglang_dsl.compiler.choice_methods import LogprobEntry, common_length

T = TypeVar("T")


@dataclass(frozen=True)
class ChoiceRow:
    """One scoring request: ``input_ids`` with prompt logprobs from ``logprob_start_len`` (whose entry has none,
    as nothing precedes it in the window); the choice's own tokens start at ``logprob_start_len + 1``."""

    choice: int
    input_ids: tuple[int, ...]
    logprob_start_len: int


@dataclass(frozen=True)
class ChoiceScoring:
    """The scoring plan of one select. ``starts[i]``: where choice ``i``'s own tokens start in its prompt;
    ``first_tokens[i]``: its first token when the prefix request reports that token's logprob, else None;
    ``rows``: the requests still needed."""

    prompts: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]
    first_tokens: tuple[int | None, ...]
    rows: tuple[ChoiceRow, ...]

    @classmethod
    def plan(cls, prefix: Sequence[int], prompts: Sequence[Sequence[int]], next_token: bool = True
             ) -> "ChoiceScoring":
        """``prompts[i]``: the token ids of the prefix's text followed by choice ``i``."""
        prompts = tuple(tuple(p) for p in prompts)
        starts, firsts, rows = [], [], []
        for i, ids in enumerate(prompts):
            start = common_length(prefix, ids)
            if next_token and prefix and start == len(prefix) and len(ids) > start:
                firsts.append(ids[start])
                if len(ids) > start + 1:
                    rows.append(ChoiceRow(i, ids, start))
            else:
                start = max(1, start)  # nothing precedes a prompt's first token
                firsts.append(None)
                if len(ids) > start:
                    rows.append(ChoiceRow(i, ids, start - 1))
            starts.append(start)
        return cls(prompts, tuple(starts), tuple(firsts), tuple(rows))

    @property
    def choice_tokens(self) -> list[tuple[int, ...]]:
        """Each choice's own tokens (what its unconditional likelihood scores)."""
        return [ids[start:] for ids, start in zip(self.prompts, self.starts)]

    def by_choice(self, row_values: Sequence[T]) -> list[T | None]:
        """Per choice, the value of its row (``row_values`` in the order of ``rows``); None without a row."""
        values: list[T | None] = [None] * len(self.prompts)
        for row, value in zip(self.rows, row_values):
            values[row.choice] = value
        return values

    @property
    def next_token_ids(self) -> tuple[int, ...]:
        """The distinct first tokens whose next-token logprobs the prefix request must return."""
        return tuple(sorted({t for t in self.first_tokens if t is not None}))

    def conditional(self, next_token_logprobs: Mapping[int, LogprobEntry],
                    row_logprobs: Sequence[Sequence[LogprobEntry]]) -> list[list[LogprobEntry]]:
        """Each choice's token entries, from the prefix request's next-token entries (by token id) and each
        row's ``input_token_logprobs`` (in the order of ``rows``)."""
        entries = [[] if t is None else [next_token_logprobs[t]] for t in self.first_tokens]
        for row, logprobs in zip(self.rows, row_logprobs):
            entries[row.choice].extend(logprobs[1:])
        return entries


def next_token_entries(listed: Sequence[Sequence[LogprobEntry]] | None) -> dict[int, LogprobEntry] | None:
    """The first output position's ``token_ids_logprob`` entries by token id (None when there are none)."""
    if not listed:
        return None
    return {int(entry[1]): tuple(entry) for entry in listed[0]}
