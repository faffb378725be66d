"""Running one program state: the expressions appended to it, in order, against a backend.

A program body runs in the caller's thread and only appends (`Executor.submit`); the appended expressions run
one after another as a coroutine on the interpreter loop (`sglang_dsl.lang.loop`), started when work arrives
and finished when the queue is empty. Readers block on a condition until what they need is written:

- ``s["x"]`` waits for every submitted write of ``x`` (`Executor.get`), not for anything else;
- `Executor.sync` waits for everything submitted so far.

Leaves run one at a time, except that queued text / gen / select leaves may run together as one backend request
when the backend runs segments (`sglang_dsl.lang.fusion`); either way their results are stored the same.

The first failure is kept: queued work is dropped, waiters wake up and raise it (a `ProgramError` naming the
program and node), and so does any later ``submit``. Nothing waits on work that will not run.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sglang_dsl.lang import fusion, loop
from sglang_dsl.lang.config import global_config
from sglang_dsl.lang.errors import ProgramError, UnsupportedFeatureError
from sglang_dsl.lang.exprs import (
    Expr, Gen, Image, RoleBegin, RoleEnd, Select, Text, VarScopeBegin, VarScopeEnd, written_variables,
)
from sglang_dsl.lang.params import SamplingParams
from sglang_dsl.lang.roles import turn_closing, turn_opening
from sglang_dsl.lang.stream_meta import chunk_meta

if TYPE_CHECKING:
    from backends.base import Backend

StreamChunk = tuple[str, dict]


@dataclass(frozen=True)
class NodeRun:
    """How one leaf expression ran: ``leaf`` is the very object that was appended (match it by identity),
    ``started`` its ``time.perf_counter()`` start, ``seconds`` its wall time, ``meta`` the backend's meta for a
    gen or select (``prompt_tokens``, ``cached_tokens``, ``completion_tokens``...), ``None`` for other kinds."""

    leaf: Expr
    started: float
    seconds: float
    meta: dict | None


class Executor:
    """The state of one program (or fork branch) and the runner of what is appended to it.

    Public fields (read them under ``changed``): ``text``, ``messages`` (OpenAI format), ``variables``,
    ``meta_info``, ``images``, ``streams`` (per variable, the ``(chunk, meta)`` pieces of a streamed gen),
    ``error``, ``runs`` (a `NodeRun` per leaf that ran, in order); ``body_thread`` is the thread running the
    program's body."""

    def __init__(self, program: str, backend: "Backend", defaults: SamplingParams, *, stream: bool = False,
                 extra_sampling: dict[str, Any] | None = None, branch: str = "", spec_tokens: int | None = None):
        self.program, self.backend, self.defaults, self.stream = program, backend, defaults, stream
        self.extra_sampling = extra_sampling or {}
        self.spec_tokens = spec_tokens
        self.branch = branch
        self.changed = threading.Condition()
        self.text = ""
        self.messages: list[dict[str, Any]] = []
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.images: list[Image] = []
        self.streams: dict[str, list[StreamChunk]] = {}
        self.error: BaseException | None = None
        self.runs: list[NodeRun] = []
        self.ended = False
        self.fork_start = 0
        self.children: list[Executor] = []
        self.before_first_request: Callable[[], None] | None = None
        self.body_thread: threading.Thread | None = None
        self._role: str | None = None
        self._role_start = 0
        self._turn_images: list[Image] = []
        self._scopes: dict[str, int] = {}
        self._queue: deque[Expr] = deque()
        self._offset = 0  # leaves of the head expression that already ran
        self._writes: Counter[str] = Counter()
        self._submitted = 0
        self._done = 0
        self._task: Future | None = None
        self._leaf: Expr | None = None

    # ---- the caller's side ------------------------------------------------------------------------------

    def submit(self, expr: Expr) -> None:
        """Queue ``expr``; raises the state's error if it already failed."""
        with self.changed:
            if self.error is not None:
                raise self.error
            self._writes.update(written_variables(expr))
            self._queue.append(expr)
            self._submitted += 1
            start = self._task is None
            if start:
                self._task = loop.spawn(self._drain())

    def sync(self) -> None:
        """Wait until everything submitted so far ran (outside the body: until the body ended, too); raise the
        error if something failed."""
        if self.wait() is not None:
            raise self.error

    def wait(self) -> BaseException | None:
        """Like `sync`, but return the error instead of raising it."""
        with self.changed:
            self.changed.wait_for(lambda: self.idle() and (self.ended or self._in_body()))
            return self.error

    def idle(self) -> bool:
        """Nothing queued or running (or the state failed). Call under ``changed``."""
        return self.error is not None or self._done >= self._submitted

    def finished(self) -> bool:
        """The program ended and all its work ran (or it failed). Call under ``changed``."""
        return self.error is not None or (self.ended and self._done >= self._submitted)

    def get(self, name: str, table: str = "variables") -> Any:
        """Wait for variable ``name`` (or its entry in ``meta_info``) and return it. Outside the program's body
        (e.g. reading a streamed run), a variable not appended yet is waited for until the body ends."""
        with self.changed:
            self.changed.wait_for(lambda: self._readable(name, table))
            values = getattr(self, table)
            if self._writes[name] == 0 and name in values:
                return values[name]
            if self.error is not None:
                raise self.error
            known = ", ".join(sorted(map(repr, self.variables))) or "none"
            raise KeyError(f"program {self.program!r} has no variable {name!r} (variables: {known})")

    def _readable(self, name: str, table: str) -> bool:
        if self.error is not None:
            return True
        if self._writes[name]:
            return False
        return name in getattr(self, table) or self.ended or self._in_body()

    def _in_body(self) -> bool:
        """Called from the program's body (or from a state no body drives): do not wait for the body to end."""
        return self.body_thread is None or threading.current_thread() is self.body_thread

    def settled(self, name: str) -> bool:
        """No write of ``name`` is queued or running. Call under ``changed``."""
        return self._writes[name] == 0

    def set(self, name: str, value: Any) -> None:
        with self.changed:
            self.variables[name] = value
            self.changed.notify_all()

    def abort(self, error: BaseException) -> None:
        """Stop: drop queued work, cancel what runs (its backend request is aborted), and record ``error``
        (here and in every fork branch) unless a failure is already recorded."""
        with self.changed:
            if self.error is None:
                self.error = error
            self._queue.clear()
            task, children = self._task, list(self.children)
            self.changed.notify_all()
        if task is not None:
            task.cancel()
        for child in children:
            child.abort(error)

    def end(self) -> None:
        """The program body returned: text streams may finish once the queue is empty."""
        with self.changed:
            self.ended = True
            children = list(self.children)
            self.changed.notify_all()
        for child in children:
            child.end()

    def fork(self, size: int) -> list["Executor"]:
        """``size`` branches that continue from the current state (after running what is queued). Their shared
        prefix is committed to the backend's cache separately, once their heads are known
        (`sglang_dsl.lang.fork_commit`)."""
        self.sync()
        children = [self._branch(i) for i in range(size)]
        with self.changed:
            self.children.extend(children)
        return children

    def cache_prefix(self, prompt, node: str) -> None:
        """Hand ``prompt`` to the backend's prefix cache and wait (from the body's thread); a failure is raised
        located at ``node``. The first program of a batch lets the others start once it is cached."""
        signal = self._take_first_request_signal()
        try:
            loop.run(self.backend.cache_prefix(prompt))
        except Exception as err:
            raise self._located(err, node) from err
        finally:
            if signal is not None:
                signal()

    def _take_first_request_signal(self) -> Callable[[], None] | None:
        with self.changed:
            signal, self.before_first_request = self.before_first_request, None
            return signal

    def _branch(self, index: int) -> "Executor":
        child = Executor(self.program, self.backend, self.defaults, stream=self.stream,
                         extra_sampling=self.extra_sampling, branch=f"{self.branch}fork[{index}] ",
                         spec_tokens=self.spec_tokens)
        child.text, child.messages = self.text, copy.deepcopy(self.messages)
        child.variables, child.images = dict(self.variables), list(self.images)
        child._role, child._role_start, child._turn_images = self._role, self._role_start, list(self._turn_images)
        child.fork_start = len(self.text)
        child.body_thread = self.body_thread
        return child

    # ---- the interpreter loop's side --------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            with self.changed:
                self._pop_finished()
                if not self._queue or self.error is not None:
                    self._task = None
                    self.changed.notify_all()
                    return
                pending = self._pending_leaves()
            count = self._segment_length(pending)
            try:
                if count:
                    await self._run_segment(pending[:count])
                else:
                    count = 1
                    await self._run_leaf(pending[0])
            except asyncio.CancelledError:
                with self.changed:
                    self._task = None
                    self.changed.notify_all()
                raise
            except Exception as err:
                self._fail(self._located(err, self._leaf.label if self._leaf else None))
                return
            with self.changed:
                self._offset += count
                self._pop_finished()
                self.changed.notify_all()

    def _pop_finished(self) -> None:
        """Drop the expressions whose leaves all ran (counting them done). Call under ``changed``."""
        while self._queue and self._offset >= _leaf_count(self._queue[0]):
            self._offset -= _leaf_count(self._queue.popleft())
            self._done += 1
        if not self._queue:
            self._offset = 0

    def _pending_leaves(self) -> list[Expr]:
        """The queued leaves from the current one on: only it, unless segments may fuse (then up to the first
        leaf that cannot be fused). Call under ``changed``."""
        fuse = self._fuses()
        leaves: list[Expr] = []
        for index, expr in enumerate(self._queue):
            for leaf in list(expr.flat())[self._offset if index == 0 else 0:]:
                leaves.append(leaf)
                if not fuse or not fusion.fusable(leaf, self.backend, self.defaults):
                    return leaves
        return leaves

    def _fuses(self) -> bool:
        return global_config.enable_segment_fusion and self.backend.capabilities.segments and not self.stream

    def _segment_length(self, pending: list[Expr]) -> int:
        return fusion.segment_length(pending, self.backend, self.defaults) if self._fuses() else 0

    async def _run_leaf(self, leaf: Expr) -> None:
        self._leaf = leaf
        started = time.perf_counter()
        meta = await self._run(leaf)
        self.runs.append(NodeRun(leaf, started, time.perf_counter() - started, meta))

    async def _run_segment(self, leaves: list[Expr]) -> None:
        """Run ``leaves`` as one `Backend.run_segment` request; store each result as its node would (on a failure,
        those of the steps before the failing one, then raise). Every leaf's `NodeRun` spans the whole request."""
        from backends.base import SegmentError

        self._leaf = next(leaf for leaf in leaves if not isinstance(leaf, Text))
        await self._warm_up()
        started = time.perf_counter()
        call = fusion.segment_call(self.branch, self._prompt(), leaves, self.defaults, self.extra_sampling)
        try:
            outputs, failure = (await self.backend.run_segment(call)).outputs, None
        except SegmentError as err:
            outputs, failure = err.completed, err
        seconds, pending = time.perf_counter() - started, iter(outputs)
        for leaf in leaves:
            out = None if isinstance(leaf, Text) else next(pending, None)
            if out is None and not isinstance(leaf, Text):
                break  # the step that failed
            self._append(leaf.value if out is None else out.value)
            if out is not None:
                self._store(leaf.name, out.value, out.meta_info)
            self.runs.append(NodeRun(leaf, started, seconds, None if out is None else out.meta_info))
        if failure is not None:
            raise failure

    def _located(self, err: Exception, node: str | None) -> ProgramError:
        label = f"{self.branch}{node}" if node else self.branch.strip() or None
        if isinstance(err, ProgramError):
            return err.located(self.program, label)
        error = ProgramError(f"{type(err).__name__}: {err}", program=self.program, node=label)
        error.__cause__ = err
        return error

    def _fail(self, error: ProgramError) -> None:
        with self.changed:
            self.error = error
            self._queue.clear()
            self._task = None
            self.changed.notify_all()

    async def _run(self, leaf: Expr) -> dict | None:
        """Run one leaf; returns the backend's meta for it (gen, select) or ``None``."""
        handler = self._handlers().get(type(leaf))
        if handler is None:
            raise ProgramError(f"cannot run a {type(leaf).__name__} node")
        return await handler(leaf)

    def _handlers(self) -> dict[type, Callable[[Any], Awaitable[dict | None]]]:
        return {Text: self._text, Gen: self._gen, Select: self._select, RoleBegin: self._role_begin,
                RoleEnd: self._role_end, Image: self._image, VarScopeBegin: self._scope_begin,
                VarScopeEnd: self._scope_end}

    def _append(self, text: str) -> None:
        with self.changed:
            self.text += text
            self.changed.notify_all()

    def _store(self, name: str | None, value: Any, meta: Any) -> None:
        """Write a variable; a reader waiting for this write (and no later one) wakes up."""
        if name is None:
            return
        with self.changed:
            self.variables[name] = value
            self.meta_info[name] = meta
            self._writes[name] -= 1
            self.changed.notify_all()

    def _prompt(self):
        from backends.base import Prompt

        turn = (self._role, self.text[self._role_start:]) if self._role is not None else None
        return Prompt(self.text, tuple(self.images), tuple(self.messages), turn)

    async def _warm_up(self) -> None:
        """For the first program of a batch: cache this prompt, then let the others start."""
        signal = self._take_first_request_signal()
        if signal is not None:
            try:
                if self.backend.capabilities.prefix_cache and self.text:
                    await self.backend.cache_prefix(self._prompt())
            finally:
                signal()

    async def _text(self, leaf: Text) -> None:
        self._append(leaf.value)

    async def _gen(self, leaf: Gen) -> dict | None:
        from backends.base import GenerateCall

        await self._warm_up()
        call = GenerateCall(f"{self.branch}{leaf.label}", self._prompt(), leaf.params.merged_over(self.defaults),
                            self.extra_sampling, self.spec_tokens)
        self._check_capabilities(call.node, params=call.params)
        if self.stream and (call.params.n or 1) == 1:
            return await self._gen_streamed(leaf, call)
        out = await self.backend.generate(call)
        self._append(out.text if isinstance(out.text, str) else out.text[0])
        self._store(leaf.name, out.text, out.meta_info)
        return out.meta_info

    async def _gen_streamed(self, leaf: Gen, call) -> dict | None:
        if not self.backend.capabilities.streaming:
            raise UnsupportedFeatureError("streaming", self.backend.name)
        chunks: list[StreamChunk] = []
        if leaf.name is not None:
            with self.changed:
                self.streams[leaf.name] = chunks
        sent, logprobs_sent, last = "", {}, None
        async for out in self.backend.stream(call):
            last = out
            piece = out.text[len(sent):]
            if not piece:
                continue  # an empty step: its logprobs go with the next piece
            meta = chunk_meta(out.meta_info, logprobs_sent)
            sent = out.text
            with self.changed:
                self.text += piece
                chunks.append((piece, meta))
                self.changed.notify_all()
        if last is None:
            return None
        self._store(leaf.name, last.text, last.meta_info)
        return last.meta_info

    async def _select(self, leaf: Select) -> dict:
        from backends.base import SelectCall

        self._check_capabilities(f"{self.branch}{leaf.label}", method=leaf.choices_method.name)
        await self._warm_up()
        call = SelectCall(f"{self.branch}{leaf.label}", self._prompt(), leaf.choices, leaf.temperature,
                          leaf.choices_method)
        decision = await self.backend.select(call)
        self._append(decision.decision)
        self._store(leaf.name, decision.decision, decision.meta_info)
        return decision.meta_info

    def _check_capabilities(self, node: str, params: SamplingParams | None = None, method: str = "") -> None:
        """The per-node fallback of `sglang_dsl.compiler.capabilities` (for what the trace before the run did not
        reach)."""
        from sglang_dsl.compiler.capabilities import check_call

        empty = self._role is not None and not self.text[self._role_start:].strip()
        check_call(self.backend, node, params, method, self._role, empty, bool(self.spec_tokens))

    async def _role_begin(self, leaf: RoleBegin) -> None:
        if self._role is not None:
            raise ProgramError(f"a {leaf.role} turn cannot start inside the open {self._role} turn "
                               f"(roles do not nest; close it with {self._role}_end())")
        opening = turn_opening(self._template(), self._history(), leaf.role)
        self._append(opening)
        self._role, self._role_start, self._turn_images = leaf.role, len(self.text), []

    async def _role_end(self, leaf: RoleEnd) -> None:
        if self._role != leaf.role:
            open_turn = f"the open turn is {self._role}" if self._role else "no turn is open"
            raise ProgramError(f"{leaf.role}_end() does not match the open turn ({open_turn})")
        content = self.text[self._role_start:].lstrip()
        closing = turn_closing(self._template(), self._history(), leaf.role)
        message: dict[str, Any] = {"role": leaf.role, "content": content}
        if self._turn_images:
            message["content"] = [{"type": "text", "text": content}] + [
                {"type": "image_url", "image_url": {"url": image.data_url()}} for image in self._turn_images]
        with self.changed:
            self.text += closing
            self.messages.append(message)
            self._role = None
            self.changed.notify_all()

    async def _image(self, leaf: Image) -> None:
        template = self._template() if self.backend.capabilities.images else None
        if template is None or not template.image_token:
            raise UnsupportedFeatureError("images", self.backend.name, detail="the model takes text only")
        self._append(template.image_token)
        self.images.append(leaf)
        self._turn_images.append(leaf)

    async def _scope_begin(self, leaf: VarScopeBegin) -> None:
        self._scopes[leaf.name] = len(self.text)

    async def _scope_end(self, leaf: VarScopeEnd) -> None:
        if leaf.name not in self._scopes:
            raise ProgramError(f"var_scope({leaf.name!r}) ends without having begun")
        start = self._scopes.pop(leaf.name)
        self._store(leaf.name, self.text[start:], {})

    def _template(self):
        template = self.backend.chat_template()
        if template is None:
            raise UnsupportedFeatureError("chat roles", self.backend.name, detail="the model has no chat template")
        return template

    def _history(self) -> list[dict[str, Any]]:
        return [{"role": m["role"], "content": _text_content(m["content"])} for m in self.messages]


def _leaf_count(expr: Expr) -> int:
    return sum(1 for _ in expr.flat())


def _text_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")
