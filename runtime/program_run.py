"""The progress of one program request (`runtime.program`), kept on the scheduler thread.

`ProgramRun` knows the program's text so far and which step is current; it turns the current step into the
`GenerateRequest` the scheduler's `Req` continues as (`step_request`), records what each step produced, builds
the scoring rows of a select step and decides it. The scheduler owns the KV: at every step boundary it keeps the
request's KV up to the longest common token prefix with `target_ids` and extends the rest
(`runtime.scheduler.Scheduler._next_step`). Nothing here runs per token.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable, Mapping, Sequence

from runtime.program import (
    ProgramGen, ProgramOutput, ProgramRequest, ProgramSelect, ProgramText, StepResult, encode_program_text,
    step_label,
)
from runtime.requests import FinishReason, GenerateOutput, GenerateRequest, LogprobRequest, SamplingParams
from sglang_dsl.compiler.choice_methods import decide
from sglang_dsl.compiler.choice_scoring import ChoiceScoring, next_token_entries

ZERO_TOKENS = SamplingParams(max_new_tokens=0)
SCORING_LOGPROBS = dict(return_logprob=True, return_text_in_logprobs=True)


class ProgramRun:
    """One program request's state; ``deliver`` gets the `ProgramOutput` once, when it ends (or is aborted).
    ``matchers``: the compile futures of the constrained gen steps, by step index."""

    def __init__(self, program: ProgramRequest, tokenizer: Any, deliver: Callable[[ProgramOutput], None],
                 matchers: Mapping[int, Future] | None = None):
        self.program, self.tokenizer, self.deliver = program, tokenizer, deliver
        self.matchers = dict(matchers or {})
        self.text = program.prompt
        self.results: list[StepResult] = []
        self.step: ProgramGen | ProgramSelect | None = None
        self.step_index = -1
        self.closed = False
        self._next = 0
        self._plan: ChoiceScoring | None = None
        self._prefix: GenerateOutput | None = None  # the output of the current select's prefix step
        self._scoring: list[GenerateOutput | None] = []
        self._scoring_requests: list[GenerateRequest] = []

    # ---- steps ------------------------------------------------------------------------------------------

    def advance(self) -> ProgramGen | ProgramSelect | None:
        """Append the text steps ahead; the next gen/select becomes current (None: every step ran)."""
        steps = self.program.steps
        while self._next < len(steps) and isinstance(steps[self._next], ProgramText):
            self.text += steps[self._next].text
            self._next += 1
        if self._next == len(steps):
            self.step = None
            return None
        self.step, self.step_index = steps[self._next], self._next
        self._next += 1
        return self.step

    def target_ids(self) -> list[int]:
        """The tokens a per-node request would send for the current step: the whole text, tokenized."""
        return encode_program_text(self.tokenizer, self.text)

    def step_request(self, ids: Sequence[int]) -> GenerateRequest:
        """The request the current step continues as: a gen's sampling, or (a select) its prefix, no new tokens,
        with the next-token logprobs of the choices' first tokens (`ChoiceScoring`)."""
        if isinstance(self.step, ProgramGen):
            return GenerateRequest(self.program.rid, tuple(ids), self.step.sampling, self.step.logprobs)
        prompts = [encode_program_text(self.tokenizer, self.text + choice) for choice in self.step.choices]
        self._plan = ChoiceScoring.plan(ids, prompts)
        listed = self._plan.next_token_ids
        logprobs = LogprobRequest(token_ids_logprob=listed, **SCORING_LOGPROBS) if listed else LogprobRequest()
        return GenerateRequest(self.program.rid, tuple(ids), ZERO_TOKENS, logprobs)

    def matcher(self) -> Any:
        """The compiled constraint of the current gen step, or None."""
        future = self.matchers.get(self.step_index)
        return None if future is None else future.result()

    def gen_done(self, request: GenerateRequest, output: GenerateOutput) -> None:
        assert isinstance(self.step, ProgramGen)
        self.results.append(StepResult(self.step.node, self.step.name, output.text, request, output))
        self.text += output.text

    # ---- select ------------------------------------------------------------------------------------------

    def scoring_requests(self, prefix: GenerateOutput) -> list[GenerateRequest]:
        """The rows that score the current select's choices after its prefix (``prefix``: the output of the
        request that computed it, with the choices' first-token logprobs), all with zero new tokens: the plan's
        rows and, for methods that need them, each choice's own tokens after BOS alone."""
        step, plan = self.step, self._plan
        assert isinstance(step, ProgramSelect) and plan is not None
        rid = f"{self.program.rid}/{self.step_index}"
        rows = [GenerateRequest(f"{rid}/choice{row.choice}", row.input_ids, ZERO_TOKENS,
                                LogprobRequest(logprob_start_len=row.logprob_start_len, **SCORING_LOGPROBS))
                for row in plan.rows]
        if step.method.requires_unconditional_logprobs:
            rows += [GenerateRequest(f"{rid}/unconditional{i}", (*self._bos(), *tokens), ZERO_TOKENS,
                                     LogprobRequest(logprob_start_len=0, **SCORING_LOGPROBS))
                     for i, tokens in enumerate(plan.choice_tokens) if tokens]
        self._prefix = prefix
        self._scoring, self._scoring_requests = [None] * len(rows), rows
        return rows

    def _bos(self) -> tuple[int, ...]:
        """What an unconditional row puts before a choice's tokens."""
        bos = self.tokenizer.bos_token_id
        return (bos,) if bos is not None else ()

    def scoring_listener(self, index: int) -> Callable[[GenerateOutput], None]:
        def take(output: GenerateOutput) -> None:
            if output.finished and self._scoring_requests:
                self._scoring[index] = output
        return take

    def scoring_rids(self) -> list[str]:
        """The rids of the current select's scoring rows (none outside a select)."""
        return [row.rid for row in self._scoring_requests]

    @property
    def scoring_complete(self) -> bool:
        return all(o is not None for o in self._scoring)

    def scoring_failure(self) -> str | None:
        """The message of a scoring row that was aborted, if any."""
        for output in self._scoring:
            if output is not None and output.finish is not None and output.finish.type == "abort":
                return output.finish.message
        return None

    def decide_select(self) -> str:
        """Decide the current select from its scored rows; record and append the choice."""
        step, plan, prefix = self.step, self._plan, self._prefix
        assert isinstance(step, ProgramSelect) and plan is not None and prefix is not None and self.scoring_complete
        count = len(plan.rows)
        outputs = self._scoring
        next_tokens = next_token_entries(prefix.output_token_ids_logprobs) or {}
        conditional = plan.conditional(next_tokens, [o.input_token_logprobs for o in outputs[:count]])
        unconditional = None
        if step.method.requires_unconditional_logprobs:
            extra, head = iter(outputs[count:]), len(self._bos())
            unconditional = [list(next(extra).input_token_logprobs)[head:] if tokens else []
                             for tokens in plan.choice_tokens]
        decision = decide(step.method, step.choices, step.temperature, conditional, unconditional)
        decision.meta_info.update(prompt_tokens=prefix.prompt_tokens, cached_tokens=prefix.cached_tokens,
                                  choices_cached_tokens=plan.by_choice([o.cached_tokens for o in outputs[:count]]))
        self.results.append(StepResult(step.node, step.name, decision.decision, meta_info=decision.meta_info))
        self.text += decision.decision
        self._scoring, self._scoring_requests, self._plan, self._prefix = [], [], None, None
        return decision.decision

    # ---- the end -----------------------------------------------------------------------------------------

    def finished(self, output: GenerateOutput) -> None:
        """The listener of the program's `Req`: called once, when the program ends or is aborted."""
        if self.closed:
            return
        self.closed = True
        finish = output.finish
        if finish is not None and finish.type == "abort":
            where = f"{step_label(self.step_index, self.step.node)}: " if self.step is not None else ""
            finish = FinishReason("abort", message=f"{where}{finish.message}")
        else:
            finish = None
        appended = self.text[len(self.program.prompt):]
        self.deliver(ProgramOutput(self.program.rid, tuple(self.results), appended, finish))


def when_all(futures: Mapping[int, Future], nodes: Mapping[int, str], first: int | None) -> Future | None:
    """A future done when every compile in ``futures`` is; its result is the matcher of step ``first`` (None
    when that step has none). A failed compile fails it with a message naming the step. None without futures."""
    if not futures:
        return None
    combined: Future = Future()
    pending, lock = set(futures), threading.Lock()

    def one_done(index: int) -> None:
        with lock:  # compiles finish on a worker thread, or at once on the caller's
            pending.discard(index)
            if pending:
                return
        for index, future in futures.items():
            if future.exception() is not None:
                combined.set_exception(ValueError(f"{step_label(index, nodes[index])}: {future.exception()}"))
                return
        combined.set_result(futures[first].result() if first in futures else None)

    for index, future in futures.items():
        future.add_done_callback(lambda _, index=index: one_done(index))
    return combined
