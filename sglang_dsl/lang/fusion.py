"""Segment fusion in the interpreter: queued text / gen / select leaves run as one backend request.

When the backend has ``Capabilities.segments`` and the run is not streamed, the executor looks at the leaves
already submitted and waiting (from the current position of the head expression on, across later expressions)
and takes the longest run of fusable leaves from the start (`segment_length`). With at least two model calls in
it, the run becomes one `Backend.run_segment` call (`segment_call`); otherwise leaves run one by one as before.
A run ends at anything else (roles, images, variable scopes) and before trailing texts (the next request
carries them). Forks synchronize the state first, so they end a segment too.

Fusable: `Text`; `Gen` with one sample and output logprobs only (``logprob_start_len`` unset); `Select` when
the backend scores choices. The results are stored exactly as the per-node calls store theirs, so programs
behave the same either way. ``global_config.enable_segment_fusion`` (default on) switches fusion off, e.g. to
compare fused and unfused runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from sglang_dsl.lang.exprs import Expr, Gen, Select, Text
from sglang_dsl.lang.params import SamplingParams

if TYPE_CHECKING:
    from backends.base import Backend, Prompt, SegmentCall, SegmentStep

MIN_CALLS = 2  # a run with a single model call is an ordinary request


def fusable(leaf: Expr, backend: "Backend", defaults: SamplingParams) -> bool:
    """Whether ``leaf`` can run inside a segment on ``backend``."""
    if isinstance(leaf, Text):
        return True
    if isinstance(leaf, Gen):
        params = leaf.params.merged_over(defaults)
        return (params.n or 1) == 1 and params.logprob_start_len is None
    return isinstance(leaf, Select) and backend.capabilities.select


def segment_length(leaves: Sequence[Expr], backend: "Backend", defaults: SamplingParams) -> int:
    """How many of ``leaves`` (from the start) form one segment; 0 when they would make fewer than
    `MIN_CALLS` model calls."""
    end = calls = last_call = 0
    for leaf in leaves:
        if not fusable(leaf, backend, defaults):
            break
        end += 1
        if not isinstance(leaf, Text):
            calls, last_call = calls + 1, end
    return last_call if calls >= MIN_CALLS else 0


def segment_call(branch: str, prompt: "Prompt", leaves: Sequence[Expr], defaults: SamplingParams,
                 extra_sampling: Mapping[str, Any]) -> "SegmentCall":
    """The backend call running ``leaves`` after ``prompt``; node names carry the fork ``branch`` prefix."""
    from backends.base import SegmentCall

    steps = tuple(_step(branch, leaf, defaults, extra_sampling) for leaf in leaves)
    first = next(leaf for leaf in leaves if not isinstance(leaf, Text))
    return SegmentCall(f"{branch}{first.label}", prompt, steps)


def _step(branch: str, leaf: Expr, defaults: SamplingParams, extra_sampling: Mapping[str, Any]) -> "SegmentStep":
    from backends.base import GenStep, SelectStep, TextStep

    if isinstance(leaf, Text):
        return TextStep(leaf.value)
    if isinstance(leaf, Gen):
        return GenStep(f"{branch}{leaf.label}", leaf.name, leaf.params.merged_over(defaults), dict(extra_sampling))
    assert isinstance(leaf, Select)
    return SelectStep(f"{branch}{leaf.label}", leaf.name, leaf.choices, leaf.temperature, leaf.choices_method)
