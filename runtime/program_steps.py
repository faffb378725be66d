"""How the scheduler moves a program request (`runtime.program`) from step to step: the part of
`runtime.scheduler.Scheduler` that only program requests use (a mixin over the scheduler's queues, cache and
memory).

When a step ends, the same `Req` restarts as the next step on its row: it keeps the KV of the longest common token
prefix with the next step's prompt (`_truncate_kv` cuts the rest) and extends what is new, always computing its
last token again for its logits. A select's prefix step also returns the choices' first-token logprobs; then the
request parks: its KV goes to the radix cache and its row back to the pool while the scoring rows of longer
choices (`sglang_dsl.compiler.choice_scoring`) run over the cached prefix; after the decision it is admitted
again and finds its prefix (and the chosen choice, if a row computed it) in the cache. The last step finishes
it. Nothing here runs per token."""

from __future__ import annotations

import torch

from runtime.program import ProgramGen
from runtime.req import Req
from runtime.requests import FinishReason
from sglang_dsl.compiler.choice_methods import common_length


class ProgramSteps:
    """Mixed into `runtime.scheduler.Scheduler` (whose attributes and helpers it uses)."""

    def _step_ended(self, req: Req, reason: FinishReason) -> None:
        """A program's gen ended (or its select's prefix is in the KV): record it and go on."""
        run = req.program
        if not isinstance(run.step, ProgramGen):
            return self._start_scoring(req)
        self._record(req, reason, count_request=False)
        self._end_output(req, reason)
        run.gen_done(req.request, req.output())
        self._next_step(req)

    def _next_step(self, req: Req) -> None:
        """Restart ``req`` as its program's next gen/select, keeping the KV its prompt shares; or finish."""
        run = req.program
        step = run.advance()
        if step is None:
            return self._finish(req, FinishReason("stop", matched=None))
        ids = run.target_ids()
        if len(ids) >= self.runner.context_length:
            message = f"the program has {len(ids)} tokens; the context holds {self.runner.context_length}"
            return self._finish(req, FinishReason("abort", message=message))
        if req.row is not None:  # the last token is computed again for its logits (a gen's, or a select's scores)
            self._truncate_kv(req, min(common_length(req.fill_ids[: req.kv_len], ids), len(ids) - 1))
        req.restart(run.step_request(ids), cached_tokens=req.kv_len)
        req.constraint = self._request_constraint(req, run.matcher()) if isinstance(step, ProgramGen) else None
        if req.row is None:  # after a select: admitted again, its prefix and the chosen choice found in the cache
            self.waiting.insert(0, req)
            return
        self.prompt_tokens_seen += len(ids)
        self.cached_tokens_seen += req.kv_len
        if self._reserved([req]) > self._free_room() - self._reserved(self.running + self.prefilling):
            self._release_kv(req)  # no room to go on now: wait like a retracted request
            req.num_retractions += 1
            self.waiting.insert(0, req)
            return
        self.prefilling.insert(0, req)

    def _start_scoring(self, req: Req) -> None:
        """Park ``req`` and queue its select's scoring rows, which read its prefix from the radix cache: the
        request hands its KV to the cache and its row back while they run (parked requests hold no row, so
        scoring rows always find one)."""
        self._record(req, FinishReason("length"), count_request=False)
        self._release_kv(req)
        run = req.program
        for i, row in enumerate(run.scoring_requests(req.output())):
            self._enqueue(Req(row, req.tokenizer, run.scoring_listener(i), counted=False))
        self.parked.append(req)

    def _resume_parked(self) -> None:
        for req in [r for r in self.parked if r.program.scoring_complete]:
            self.parked.remove(req)
            failure = req.program.scoring_failure()
            if failure is not None:
                self._finish(req, FinishReason("abort", message=f"scoring the choices failed: {failure}"))
                continue
            req.program.decide_select()
            self._next_step(req)

    def _abort_row(self, rid: str) -> None:
        for queue in (self.waiting, self.prefilling, self.running):
            for req in queue:
                if req.rid == rid and not req.counted:
                    queue.remove(req)
                    return self._finish(req, FinishReason("abort", message="its program was aborted"))

    def _truncate_kv(self, req: Req, n: int) -> None:
        """Keep the KV of ``req``'s first ``n`` tokens (``n <= kv_len``), freeing the pages after them. A cut
        inside the radix cache's part re-pins the path to the cut (whole pages) instead."""
        if n >= req.kv_len:
            return
        table, page = self.runner.req_to_token.table, self.runner.allocator.page_size
        if n < req.prefix_len:
            self.runner.allocator.free_slots(table[req.row, req.prefix_len : req.kv_len].to("cpu", torch.int64))
            self.cache.unlock(req.node)
            match = self.cache.match_prefix(req.fill_ids[:n])
            self.cache.lock(match.node)
            req.node, req.prefix_len, req.kv_len = match.node, len(match.slots), len(match.slots)
        else:
            keep = max(req.prefix_len, -(-n // page) * page)
            self.runner.allocator.free_slots(table[req.row, keep : req.kv_len].to("cpu", torch.int64))
            req.kv_len = n
        req.last_slot = int(table[req.row, req.kv_len - 1]) if req.kv_len else 0
