"""The program state ``s``: what a program body appends to, and what ``run()`` returns.

``s += expr`` queues ``expr`` and returns at once; reading (``s["x"]``, ``text()``, ``messages()``) waits for
what it needs. ``fork(n)`` gives a `ProgramStateGroup` of branches that run concurrently from the current text.
Errors of the backend are raised by reads (and by ``+=`` after a failure), as a `ProgramError` naming the
program and node."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable, Iterator

from sglang_dsl.lang.executor import Executor
from sglang_dsl.lang.exprs import ExprLike, ExprList, Text, VarScopeBegin, VarScopeEnd, as_expr
from sglang_dsl.lang.fork_commit import ForkCommit, leading_text
from sglang_dsl.lang.primitives import assistant, system, user


class ProgramState:
    """One program's text, chat messages and variables, filled in as its expressions run."""

    def __init__(self, executor: Executor):
        self._ex = executor

    # ---- appending --------------------------------------------------------------------------------------

    def __iadd__(self, other: ExprLike) -> "ProgramState":
        if other is None:
            raise ValueError(f"program {self._ex.program!r}: cannot append None")
        self._ex.submit(as_expr(other))
        return self

    def system(self, expr: ExprLike | None = None):
        """With ``expr``: append a system turn now. Without: a context manager around the turn's content."""
        return self._role(system, expr)

    def user(self, expr: ExprLike | None = None):
        """With ``expr``: append a user turn now. Without: a context manager around the turn's content."""
        return self._role(user, expr)

    def assistant(self, expr: ExprLike | None = None):
        """With ``expr``: append an assistant turn now. Without: a context manager around the turn's content."""
        return self._role(assistant, expr)

    def _role(self, make: Callable[[Any], ExprList], expr: ExprLike | None):
        if expr is None:
            return self._turn(make(None))
        self += make(expr)
        return ExprList(())  # so that ``s += s.user(x)`` appends the turn once, not twice

    @contextlib.contextmanager
    def _turn(self, turn: ExprList) -> Iterator[None]:
        begin, end = turn.items
        self += begin
        yield
        self += end

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """The text appended inside the block becomes variable ``name``."""
        self += VarScopeBegin(name)
        yield
        self += VarScopeEnd(name)

    # ---- reading ----------------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._ex.get(name)

    def get_var(self, name: str) -> Any:
        """Wait for variable ``name`` and return it (a list after ``gen(n>1)`` or a gathering ``join``)."""
        return self._ex.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._ex.set(name, value)

    def set_var(self, name: str, value: Any) -> None:
        self._ex.set(name, value)

    def __contains__(self, name: str) -> bool:
        """Whether ``name`` is already set (does not wait for a gen in flight)."""
        with self._ex.changed:
            return name in self._ex.variables

    def get_meta_info(self, name: str) -> Any:
        """The backend's meta for variable ``name``: for a gen, the native API's ``meta_info``
        (``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``finish_reason``, logprobs); for a select,
        the choices method's scores."""
        return self._ex.get(name, table="meta_info")

    def text(self) -> str:
        """The whole text, chat-template tokens included, once everything appended so far has run."""
        self._ex.sync()
        return self._ex.text

    def messages(self) -> list[dict[str, Any]]:
        """The chat turns so far in OpenAI format (images as ``image_url`` parts)."""
        self._ex.sync()
        with self._ex.changed:
            return [dict(m) for m in self._ex.messages]

    def sync(self) -> None:
        """Wait until everything appended so far has run; raise if something failed."""
        self._ex.sync()

    def error(self) -> BaseException | None:
        """Wait like `sync`, then return the failure (or None) instead of raising it."""
        return self._ex.wait()

    def variables(self) -> dict[str, Any]:
        """A copy of every variable, once everything appended so far has run."""
        self._ex.sync()
        with self._ex.changed:
            return dict(self._ex.variables)

    def __repr__(self) -> str:
        self._ex.wait()
        return f"ProgramState({self._ex.text!r})"

    # ---- streaming --------------------------------------------------------------------------------------

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Pieces of the text as they are generated (``run(stream=True)``), or of variable ``var_name``. Without
        streaming, the text (or the variable) comes in one piece."""
        for piece, _ in self._pieces(var_name):
            yield piece

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """`text_iter` for ``async for``; with ``return_meta_data``, ``(piece, meta)`` pairs where ``meta`` has
        the output logprobs of that piece only."""
        pieces = self._pieces(var_name)
        done = object()
        while (item := await asyncio.to_thread(next, pieces, done)) is not done:
            yield item if return_meta_data else item[0]

    def _pieces(self, var_name: str | None) -> Iterator[tuple[str, dict]]:
        return _text_pieces(self._ex) if var_name is None else _variable_pieces(self._ex, var_name)

    # ---- branching --------------------------------------------------------------------------------------

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> "ProgramStateGroup":
        """``size`` branches continuing from here; each gets its own text and variables and runs concurrently
        with the others. (``position_ids_offset`` is accepted for compatibility and has no effect.)"""
        children = self._ex.fork(size)
        return ProgramStateGroup([ProgramState(child) for child in children], self, ForkCommit(self._ex, size))

    @contextlib.contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator["ProgramState"]:
        """A one-branch fork whose new variables are gathered into this state (as lists) when the block ends."""
        group = self.fork(1)
        yield group[0]
        group.join()


class ProgramStateGroup:
    """The branches of a ``fork``: index or iterate them, append to all of them, then ``join``. The fork's prefix
    is committed to the cache on the group's first use (`sglang_dsl.lang.fork_commit`)."""

    def __init__(self, states: list[ProgramState], parent: ProgramState, commit: ForkCommit | None = None):
        self.states = states
        self.parent = parent
        self._commit = commit

    def commit_prefix(self, heads: list[str] | None = None) -> None:
        """Commit the fork's prefix now, if it is not yet: the parent's text at the fork and, given ``heads`` (the
        text each branch appends first), the start those share."""
        if self._commit is not None:
            self._commit(heads)

    def __getitem__(self, index: int) -> ProgramState:
        self.commit_prefix()
        return self.states[index]

    def __setitem__(self, index: int, state: ProgramState) -> None:
        """Completes ``forks[i] += expr`` (Python stores the result back); branches cannot be replaced."""
        if state is not self.states[index]:
            raise TypeError("fork branches cannot be replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        self.commit_prefix()
        return iter(self.states)

    def __iadd__(self, other: Any) -> "ProgramStateGroup":
        """``other``: a callable ``i -> expr``, a list with one expression per branch, or one expression (or
        string) for every branch."""
        if callable(other):
            items = [other(i) for i in range(len(self.states))]
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} expressions for {len(self.states)} fork branches")
            items = list(other)
        else:
            items = [other] * len(self.states)
        self.commit_prefix([leading_text(item) for item in items])
        for state, item in zip(self.states, items):
            state += item
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for every branch, then merge into the parent. ``gather_variable``: each variable a branch set
        that the parent lacks becomes a list in branch order. ``concate_and_append``: the text every branch
        added is appended to the parent, in branch order."""
        if self._commit is not None:
            self._commit.cancel()
        for state in self.states:
            state.sync()
            state._ex.end()
        if mode == "gather_variable":
            self._gather()
        elif mode == "concate_and_append":
            added = "".join(state._ex.text[state._ex.fork_start:] for state in self.states)
            self.parent._ex.submit(Text(added))
        else:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', not {mode!r}")

    def _gather(self) -> None:
        parent = self.parent._ex
        with parent.changed:
            known = set(parent.variables)
        names = dict.fromkeys(n for s in self.states for n in s._ex.variables if n not in known)
        for name in names:
            parent.set(name, [state._ex.variables.get(name) for state in self.states])


def _text_pieces(ex: Executor) -> Iterator[tuple[str, dict]]:
    sent = 0
    while True:
        with ex.changed:
            ex.changed.wait_for(lambda: len(ex.text) > sent or ex.finished())
            piece, sent, finished, error = ex.text[sent:], len(ex.text), ex.finished(), ex.error
        if piece:
            yield piece, {}
        if error is not None:
            raise error
        if finished:
            return


def _variable_pieces(ex: Executor, name: str) -> Iterator[tuple[str, dict]]:
    taken, streamed = 0, False
    while True:
        with ex.changed:
            ex.changed.wait_for(lambda: len(ex.streams.get(name, ())) > taken or _variable_done(ex, name)
                                or ex.finished())
            pieces = ex.streams.get(name, [])[taken:]
            done, finished = _variable_done(ex, name), ex.finished()
        taken += len(pieces)
        streamed = streamed or bool(pieces)
        yield from pieces
        if done or finished:
            break
    if streamed and done:
        return
    value = ex.get(name)  # raises the program's error, or KeyError if the variable never came
    if not streamed:
        yield (value if isinstance(value, str) else str(value)), ex.meta_info.get(name, {})


def _variable_done(ex: Executor, name: str) -> bool:
    return name in ex.variables and ex.settled(name)
