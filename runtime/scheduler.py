"""Continuous batching over the radix cache.

Each ``step`` builds one mixed batch: new and unfinished prompts (chunked, within a token budget) next to every
running request's next token, then samples and hands results back. Memory comes from the radix cache's
evictable leaves when the free pool runs short; when decoding still cannot fit, the requests that have done the
least work are retracted (their KV goes into the cache, they rejoin the queue and resume where they were).

A program request (`runtime.program`) stays one `Req` from step to step: when a step ends, the request restarts
as its next step on the same row, keeps the KV of the tokens it shares with the next step's prompt and extends the
rest; a select step parks it while its choices are scored by rows over its committed prefix."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from runtime.args import RuntimeArgs
from runtime.constraint import RequestConstraint, apply_constraint_masks
from runtime.forward_batch import ForwardBatch
from runtime.model_runner import ModelRunner
from runtime.program_steps import ProgramSteps
from runtime.radix_cache import RadixCache
from runtime.req import Req
from runtime.requests import FinishReason
from runtime.sampler import SamplingBatch, listed_logprobs, sample, token_logprobs
from runtime.schedule_policy import SCHEDULE_POLICIES, order_waiting, prefix_key

RESERVE_CAP = 4096  # most future tokens one request reserves KV for at admission
DEDUP_MIN_TOKENS = 32  # a shared uncached prefix this long is computed once, by the first request that has it


@dataclass
class Extend:
    """One request's part of a batch: ``tokens`` appended at position ``start`` (its KV length before)."""

    req: Req
    tokens: list[int]

    def __post_init__(self) -> None:
        self.start = self.req.kv_len
        self.first_logit = _first_logit_position(self.req, self.start, len(self.tokens))

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def completes_fill(self) -> bool:
        return self.end == self.req.fill_len


class Scheduler(ProgramSteps):
    """Owns the waiting and running requests and the radix cache; not thread-safe (the engine drives it from one
    thread). Program requests' step transitions are in `ProgramSteps`."""

    def __init__(self, runner: ModelRunner, eos_token_ids: frozenset[int], args: RuntimeArgs, metrics=None):
        if args.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(f"schedule_policy {args.schedule_policy!r} is not one of {', '.join(SCHEDULE_POLICIES)}")
        self.runner, self.args, self.metrics = runner, args, metrics
        self.cache = RadixCache(runner.allocator, disable=args.disable_radix_cache)
        self.eos_token_ids = eos_token_ids
        self.pending: list[Req] = []  # waiting for their constraint to compile (not yet schedulable)
        self.waiting: list[Req] = []
        self.prefilling: list[Req] = []  # admitted, prompt not fully in the KV cache yet
        self.running: list[Req] = []  # decoding
        self.parked: list[Req] = []  # program requests whose select choices are being scored (no row, no KV)
        self.new_token_ratio = args.new_token_ratio
        self.generator = torch.Generator(runner.device).manual_seed(args.seed)  # randomness of unseeded requests
        self.prompt_tokens_seen = 0
        self.cached_tokens_seen = 0
        self.jump_forward = True  # constrained requests append forced text in one extend step
        self._jump_room: int | None = None  # KV slots left to this sampling pass's jump-forwards

    # ---- public -------------------------------------------------------------------------------------------

    def add(self, req: Req) -> None:
        if req.constraint_future is not None and not req.constraint_future.done():
            self.pending.append(req)  # `promote_compiled` queues it once its constraint is compiled
            return
        self._enqueue(req)

    # ---- constrained decoding (runtime/constraint.py) -------------------------------------------------------

    def promote_compiled(self) -> None:
        """Queue the pending requests whose constraint has compiled (or fail those whose compile failed)."""
        for req in [r for r in self.pending if r.constraint_future.done()]:
            self.pending.remove(req)
            self._enqueue(req)

    def _enqueue(self, req: Req) -> None:
        if req.constraint_future is not None and req.constraint is None:
            try:
                matcher = req.constraint_future.result()
            except Exception as err:
                return self._finish(req, FinishReason("abort", message=f"constraint cannot be compiled: {err}"))
            req.constraint = self._request_constraint(req, matcher)
        self.waiting.append(req)

    def _request_constraint(self, req: Req, matcher) -> RequestConstraint | None:
        jump = self.jump_forward and not req.request.logprobs.return_logprob
        return None if matcher is None else RequestConstraint(matcher, req.request.sampling, jump,
                                                              budget_rule=self.args.constraint_budget)

    def _token_room(self, req: Req) -> int:
        """Tokens the request may still append: within max_new_tokens and the context."""
        return min(req.remaining_new_tokens, self.runner.context_length - 1 - req.kv_len)

    def _constrained_tokens(self, req: Req, token: int) -> list[int] | None:
        """The sampled token, or it and the text the constraint forces after it (jump-forward), as tokens that fit
        in max_new_tokens, the context and the KV memory this pass's jumps may still take."""
        room = self._token_room(req)
        if req.constraint.jump_forward and room > 1:
            if self._jump_room is None:  # once per pass: the sum runs over every admitted request
                free = self._free_room() - self._reserved(self.running + self.prefilling)
                self._jump_room = int(free) - self.runner.allocator.page_size
            room = min(room, max(1, self._jump_room))
        tokens = req.constraint.expand(token, req.tokenizer, room)
        if tokens is not None and self._jump_room is not None:
            self._jump_room -= len(tokens) - 1
        return tokens

    def _extend_forced(self, req: Req) -> None:
        """A request that got jump-forward tokens computes their KV in one extend step, like a prompt chunk."""
        self.running.remove(req)
        self.prefilling.insert(0, req)

    # ---- public (continued) ---------------------------------------------------------------------------------

    def abort(self, rid: str) -> bool:
        for queue in (self.pending, self.waiting, self.prefilling, self.running, self.parked):
            for req in queue:
                if req.rid == rid and req.counted:
                    queue.remove(req)
                    self._finish(req, FinishReason("abort", message="aborted by the client"))
                    for row in req.program.scoring_rids() if req.program is not None else ():
                        self._abort_row(row)
                    return True
        return False

    def abort_all(self, message: str) -> None:
        """End every request with an ``abort`` carrying ``message``, releasing what each holds."""
        for queue in (self.pending, self.waiting, self.prefilling, self.running, self.parked):
            while queue:
                req = queue.pop()
                try:
                    self._finish(req, FinishReason("abort", message=message))
                except Exception:  # state may be broken after a failed step: still tell the caller
                    req.finish = FinishReason("abort", message=message)
                    req.emit()

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running or self.parked)

    def flush_cache(self) -> bool:
        return not self.has_work and self.cache.reset()

    def check_integrity(self) -> None:
        """free + cached + in use == total, and every request row accounted for (raises AssertionError)."""
        admitted = self.prefilling + self.running
        self.cache.check_integrity(sum(r.owned_slots for r in admitted))
        pool = self.runner.req_to_token
        assert pool.num_free_rows + len(admitted) == pool.table.shape[0], "request rows leaked"

    def kv_usage(self) -> float:
        total = (self.runner.allocator.num_pages - 1) * self.runner.allocator.page_size
        return 1.0 - (self.runner.allocator.num_free_slots + self.cache.evictable_size) / total

    def cache_hit_rate(self) -> float:
        return self.cached_tokens_seen / self.prompt_tokens_seen if self.prompt_tokens_seen else 0.0

    def step(self) -> None:
        """Run one forward pass over everything that can make progress."""
        self._resume_parked()
        decodes = self._decodes()
        extends = self._admit(decode_slots=len(decodes) * self.runner.allocator.page_size)
        if not extends and not decodes:
            return
        batch_items = extends + [Extend(r, [r.output_ids[-1]]) for r in decodes]
        logits, logit_rows = self._forward(batch_items)
        self._process(batch_items, logits, logit_rows)
        self.new_token_ratio = max(self.args.min_new_token_ratio, self.new_token_ratio - self.args.new_token_ratio_decay)

    # ---- admission ----------------------------------------------------------------------------------------

    def _reserved(self, reqs) -> float:
        """KV a set of admitted requests may still need: the rest of their prompts, a page each for alignment,
        and a share of their remaining output."""
        page = self.runner.allocator.page_size
        return sum(r.fill_len - r.kv_len + page + min(r.remaining_new_tokens, RESERVE_CAP) * self.new_token_ratio
                   for r in reqs)

    def _admit(self, decode_slots: int) -> list[Extend]:
        """Continue prompts already being prefilled, then admit waiting requests in policy order, while the token
        budget, the request slots and the KV memory (free + evictable - reserved) allow."""
        budget = self.args.max_prefill_tokens
        chunk_cap = self.args.chunked_prefill_size if self.args.chunked_prefill_size > 0 else None
        extends = []
        for req in self.prefilling:
            n = min(req.fill_len - req.kv_len, budget, chunk_cap or budget)
            if n <= 0:
                break
            extends.append(Extend(req, req.fill_ids[req.kv_len : req.kv_len + n]))
            budget -= n
        if not self.waiting or budget <= 0:
            return extends
        ordered, matches = order_waiting(self.waiting, self.cache, self.args.schedule_policy,
                                         self.args.cache_aware_queue_limit)
        claimed: set[tuple[int, ...]] = set()
        for req in ordered:
            if budget <= 0 or len(self.running) + len(self.prefilling) >= self.runner.req_to_token.table.shape[0]:
                break
            match = matches.get(req.rid) or self.cache.match_prefix(prefix_key(req))
            head = tuple(req.fill_ids[len(match.slots) : len(match.slots) + DEDUP_MIN_TOKENS])
            if len(head) == DEDUP_MIN_TOKENS and head in claimed:
                continue  # another request computes this prefix now; this one will find it cached
            self.cache.lock(match.node)
            extend_len = req.fill_len - len(match.slots)
            room = self._free_room() - decode_slots - self._reserved(self.running + self.prefilling)
            needed = extend_len + self.runner.allocator.page_size
            if needed + min(req.remaining_new_tokens, RESERVE_CAP) * self.new_token_ratio > room:
                self.cache.unlock(match.node)
                break
            claimed.add(head)
            n = min(extend_len, budget, chunk_cap or budget)
            self._start(req, match)
            extends.append(Extend(req, req.fill_ids[req.kv_len : req.kv_len + n]))
            budget -= n
        return extends

    def _start(self, req: Req, match) -> None:
        self.waiting.remove(req)
        req.row = self.runner.req_to_token.alloc(1)[0]
        req.node, req.prefix_len = match.node, len(match.slots)
        req.kv_len = req.prefix_len
        if req.prefix_len:
            self.runner.req_to_token.table[req.row, : req.prefix_len] = match.slots.to(self.runner.device)
            req.last_slot = int(match.slots[-1])
        if req.num_retractions == 0:
            req.cached_tokens = req.prefix_len
            self.prompt_tokens_seen += len(req.input_ids)
            self.cached_tokens_seen += req.prefix_len
        self.prefilling.append(req)

    def _free_room(self) -> int:
        return self.runner.allocator.num_free_slots + self.cache.evictable_size

    # ---- decode memory and retraction ---------------------------------------------------------------------

    def _decodes(self) -> list[Req]:
        """The running requests, after retracting as many as needed for each to get its next KV slot."""
        page = self.runner.allocator.page_size
        while self.running:
            needed = sum(page for r in self.running if r.kv_len % page == 0)
            if self._ensure_free(needed):
                return list(self.running)
            self._retract(min(self.running, key=lambda r: (len(r.output_ids), -len(r.input_ids))))
        return []

    def _ensure_free(self, slots: int) -> bool:
        shortfall = slots - self.runner.allocator.num_free_slots
        if shortfall > 0:
            self.cache.evict(shortfall)
        return self.runner.allocator.num_free_slots >= slots

    def _retract(self, req: Req) -> None:
        self.running.remove(req)
        self._release_kv(req)
        req.num_retractions += 1
        self.waiting.insert(0, req)
        total = sum(r.request.sampling.max_new_tokens for r in self.running) or 1
        done = sum(len(r.output_ids) for r in self.running)
        self.new_token_ratio = min(1.0, (done + 20 * len(self.running)) / total)

    def _release_kv(self, req: Req) -> None:
        """Give the request's computed KV to the radix cache and its row back to the pool."""
        if req.row is None:
            return
        table = self.runner.req_to_token.table
        self.cache.cache_prefix(req.fill_ids[: req.kv_len], req.kv_slots(table), req.prefix_len, req.node, finished=True)
        table[req.row] = 0
        self.runner.req_to_token.free([req.row])
        req.row, req.node, req.prefix_len, req.kv_len = None, None, 0, 0

    # ---- the forward pass ---------------------------------------------------------------------------------

    def _forward(self, items: list[Extend]) -> tuple[torch.Tensor, list[range]]:
        """Run the batch; logits rows for each item (its last token, plus input-logprob positions)."""
        page = self.runner.allocator.page_size
        extend_lens = torch.tensor([len(i.tokens) for i in items])
        new_pages = sum(-(-i.end // page) - -(-i.start // page) for i in items)
        if not self._ensure_free(new_pages * page):
            raise RuntimeError("KV memory exhausted although admission reserved room (scheduler bug)")
        kv_lens = torch.tensor([i.req.kv_len for i in items])
        slots = self.runner.allocator.extend(torch.tensor([i.req.last_slot for i in items]), kv_lens, extend_lens)
        batch = ForwardBatch.build(
            torch.tensor([t for i in items for t in i.tokens]), torch.tensor([i.req.row for i in items]),
            kv_lens, extend_lens, slots, self.runner.device,
        )
        logit_indices, logit_rows, offset = [], [], 0
        for item in items:
            first, end = offset + item.first_logit - item.start, offset + len(item.tokens)
            logit_rows.append(range(len(logit_indices), len(logit_indices) + end - first))
            logit_indices.extend(range(first, end))
            offset = end
        decode_only = all(len(i.tokens) == 1 for i in items) and len(logit_indices) == len(items)
        logits = self.runner.forward(batch, logit_indices=None if decode_only else torch.tensor(logit_indices))
        for item, last in zip(items, (torch.cumsum(extend_lens, 0) - 1).tolist()):
            item.req.kv_len += len(item.tokens)
            item.req.last_slot = int(slots[last])
        return logits, logit_rows

    # ---- results ------------------------------------------------------------------------------------------

    def _process(self, items: list[Extend], logits: torch.Tensor, logit_rows: list[range]) -> None:
        for item, rows in zip(items, logit_rows):
            if item.req.wants_input_logprobs and item.req in self.prefilling:
                self._record_input_logprobs(item, logits[rows.start : rows.stop])
        prefilled = [i.req for i in items if i.req in self.prefilling]
        for req in prefilled:
            self._cache_progress(req)
        to_sample = [(i.req, rows.stop - 1) for i, rows in zip(items, logit_rows) if i.completes_fill]
        for req in prefilled:
            if req.kv_len == req.fill_len:
                self.prefilling.remove(req)
                self.running.append(req)
        self._record_listed_logprobs(to_sample, logits)
        to_sample = [(r, row) for r, row in to_sample if not self._finished_without_sampling(r)]
        if to_sample:
            self._sample_and_append([r for r, _ in to_sample], logits[torch.tensor([row for _, row in to_sample])])

    def _cache_progress(self, req: Req) -> None:
        """Insert the prompt computed so far into the radix cache, so other requests can reuse it at once."""
        table = self.runner.req_to_token.table
        slots, node = self.cache.cache_prefix(req.fill_ids[: req.kv_len], req.kv_slots(table), req.prefix_len,
                                              req.node, finished=False)
        if len(slots) > req.prefix_len:
            table[req.row, : len(slots)] = slots.to(self.runner.device)
        req.node, req.prefix_len = node, len(slots)

    def _finished_without_sampling(self, req: Req) -> bool:
        if req.request.sampling.max_new_tokens > 0:
            return False
        self.running.remove(req)
        if req.program is not None:
            self._step_ended(req, FinishReason("length", matched=None))
        else:
            self._finish(req, FinishReason("length", matched=None))
        return True

    def _sample_and_append(self, reqs: list[Req], logits: torch.Tensor) -> None:
        params = [r.request.sampling for r in reqs]
        batch = SamplingBatch.build(params, self.runner.device, generator=self.generator)
        constraints = [r.constraint for r in reqs]
        self._jump_room = None  # computed by the first jump of this pass, then drawn on by each
        masked = logits
        if any(constraints):
            started = time.perf_counter()
            masked = apply_constraint_masks(logits, constraints, [self._token_room(r) for r in reqs])
            if self.metrics is not None:
                self.metrics.constraint_masks(time.perf_counter() - started)
        tokens = sample(masked, batch, [r.output_ids for r in reqs], [r.input_ids for r in reqs],
                        self.eos_token_ids).tolist()
        # a token that ends its request by id (EOS, stop_token_ids) is not output: no logprob entry either
        want = [i for i, r in enumerate(reqs) if r.request.logprobs.return_logprob and not self._ends_by_id(r, tokens[i])]
        if want:
            top_k = max(reqs[i].request.logprobs.top_logprobs_num for i in want)
            idx = torch.tensor(want)
            chosen = torch.tensor([tokens[i] for i in want], device=logits.device)
            lp, top_lp, top_ids = token_logprobs(logits[idx.to(logits.device)], chosen, top_k)
            for j, i in enumerate(want):
                self._record_output_logprob(reqs[i], tokens[i], float(lp[j]), top_lp[j].tolist(), top_ids[j].tolist())
        now = time.perf_counter()
        for req, token in zip(reqs, tokens):
            self._append_token(req, token, now)

    def _append_token(self, req: Req, token: int, now: float) -> None:
        sampling = req.request.sampling
        if self.metrics is not None:
            if req.first_token_time is None:
                self.metrics.first_token(now - req.arrival)
            else:
                self.metrics.inter_token(now - req.last_token_time)
        req.first_token_time = req.first_token_time or now
        req.last_token_time = now
        if self._ends_by_id(req, token):
            return self._finish_running(req, FinishReason("stop", matched=token))
        tokens = [token] if req.constraint is None else self._constrained_tokens(req, token)
        if tokens is None:
            return self._finish_running(req, FinishReason("abort", message="sampled a token the constraint forbids"))
        ends_by_stop = req.constraint is not None and req.constraint.ended_by_stop
        for token in tokens:
            req.output_ids.append(token)
            piece = req.detokenizer.feed(token)
            if ends_by_stop:  # the whole token, so that the stop string inside it is seen
                piece += req.detokenizer.flush()
            if req.stop_matcher is not None:
                hit = req.stop_matcher.feed(piece)
                if hit is not None:
                    req.text = req.stop_matcher.text[: hit.end if sampling.no_stop_trim else hit.keep]
                    return self._finish_running(req, FinishReason("stop", matched=hit.stop))
            req.text += piece
            if len(req.output_ids) >= sampling.max_new_tokens:
                return self._finish_running(req, self._out_of_tokens(req))
        if req.kv_len + 1 >= self.runner.context_length:
            return self._finish_running(req, self._out_of_tokens(req))
        if req.constraint is not None:
            if req.constraint.terminal:  # the constraint is complete: nothing else may follow
                return self._finish_running(req, FinishReason("stop", matched=None))
            if len(tokens) > 1:
                self._extend_forced(req)
        if req.request.stream:
            req.emit()

    def _ends_by_id(self, req: Req, token: int) -> bool:
        sampling = req.request.sampling
        return token in sampling.stop_token_ids or (token in self.eos_token_ids and not sampling.ignore_eos)

    @staticmethod
    def _out_of_tokens(req: Req) -> FinishReason:
        """Why a request that has no tokens left ends: ``stop`` where its constraint's output is complete (the
        budget rule leads there) and it could have ended there (EOS not ignored), else ``length``."""
        constraint = req.constraint
        if constraint is not None and constraint.budget_rule and constraint.allow_eos and constraint.accepting:
            return FinishReason("stop", matched=None)
        return FinishReason("length")

    def _finish_running(self, req: Req, reason: FinishReason) -> None:
        self.running.remove(req)
        if req.program is not None and reason.type != "abort":
            return self._step_ended(req, reason)
        self._finish(req, reason)

    def _finish(self, req: Req, reason: FinishReason) -> None:
        self._release_kv(req)
        self._end_output(req, reason)
        done_program = req.program is not None and req.program.step is None  # its steps' tokens are counted
        self._record(req, reason, count_request=req.counted, tokens=not done_program)
        req.emit()

    def _end_output(self, req: Req, reason: FinishReason) -> None:
        if not isinstance(reason.matched, str):  # a stop string set the text; anything else ends the stream
            req.text += req.detokenizer.flush()
        req.finish = reason

    def _record(self, req: Req, reason: FinishReason, count_request: bool, tokens: bool = True) -> None:
        if self.metrics is not None:
            counts = (len(req.input_ids), len(req.output_ids), req.cached_tokens) if tokens else (0, 0, 0)
            self.metrics.request_finished(*counts, reason.type, time.perf_counter() - req.arrival,
                                          count_request=count_request)

    # ---- logprobs -----------------------------------------------------------------------------------------

    def _record_input_logprobs(self, item: Extend, logits: torch.Tensor) -> None:
        """Logprobs of the prompt tokens predicted by this chunk's logit positions ``first_logit .. end-1``
        (a position predicts the token after it; the prompt's last position predicts an output token)."""
        req, start = item.req, item.req.request.logprobs.logprob_start_len
        if req.input_logprobs is None:
            first_token = req.input_ids[start]
            req.input_logprobs = [(None, first_token, self._token_text(req, first_token))]
            req.input_top_logprobs = [None]
            req.input_token_ids_logprobs = [None]
        if item.first_logit < start:
            return
        targets = list(req.input_ids[item.first_logit + 1 : min(item.end, len(req.input_ids) - 1) + 1])
        if not targets:
            return
        k = req.request.logprobs.top_logprobs_num
        lp, top_lp, top_ids = token_logprobs(logits[: len(targets)], torch.tensor(targets, device=logits.device), k)
        for j, token in enumerate(targets):
            req.input_logprobs.append((float(lp[j]), token, self._token_text(req, token)))
            req.input_top_logprobs.append(self._top_entries(req, top_lp[j].tolist(), top_ids[j].tolist()))
        listed = req.request.logprobs.token_ids_logprob
        if listed:
            rows = listed_logprobs(logits[: len(targets)], listed).tolist()
            req.input_token_ids_logprobs.extend(self._top_entries(req, row, listed) for row in rows)

    def _record_listed_logprobs(self, sampled: list[tuple[Req, int]], logits: torch.Tensor) -> None:
        """For requests with ``token_ids_logprob``: the listed tokens' logprobs at the output position each
        ``logits`` row predicts (for a request with no new tokens, the position after its prompt)."""
        for req, row in sampled:
            listed = req.request.logprobs.token_ids_logprob
            if listed and req.request.logprobs.return_logprob:
                (values,) = listed_logprobs(logits[row : row + 1], listed).tolist()
                req.output_token_ids_logprobs.append(self._top_entries(req, values, listed))

    def _record_output_logprob(self, req: Req, token: int, lp: float, top_lp: list[float], top_ids: list[int]) -> None:
        req.output_logprobs.append((lp, token, self._token_text(req, token)))
        k = req.request.logprobs.top_logprobs_num
        if k:
            req.output_top_logprobs.append(self._top_entries(req, top_lp[:k], top_ids[:k]))

    def _top_entries(self, req: Req, lps: list[float], ids: list[int]) -> tuple:
        return tuple((lp, i, self._token_text(req, i)) for lp, i in zip(lps, ids))

    @staticmethod
    def _token_text(req: Req, token: int) -> str | None:
        return req.tokenizer.decode([token]) if req.request.logprobs.return_text_in_logprobs else None


def _first_logit_position(req: Req, start: int, count: int) -> int:
    """Absolute position of the first of ``count`` new tokens at ``start`` whose logits are needed: the last
    one, or from ``logprob_start_len`` on while a prompt that wants input logprobs is being prefilled."""
    last = start + count - 1
    if req.wants_input_logprobs and start < len(req.input_ids):
        return max(start, min(req.request.logprobs.logprob_start_len, last))
    return last
