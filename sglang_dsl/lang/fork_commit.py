"""A fork's commit to the backend's prefix cache: made once, before any branch runs, with the head its branches
share when it is known.

``s.fork(n)`` cannot commit at once, because the text each branch appends first comes after it
(``forks += lambda i: f"Approach {i}:" + gen(...)``). The branches' group commits on its first use instead:
its ``+=`` knows every branch's expression, so the commit extends the stream's text with the tokens their heads
share (`sglang_dsl.compiler.fork_prefix`); any other first use (a branch taken alone, iterating the group)
commits the stream's text as it was at the fork. With images in the prompt, the heads are not used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sglang_dsl.compiler.codec import CHARACTERS
from sglang_dsl.compiler.fork_prefix import committed_prefix
from sglang_dsl.lang.exprs import Expr, Text

if TYPE_CHECKING:
    from sglang_dsl.lang.executor import Executor


class ForkCommit:
    """The pending commit of a fork of ``parent`` into ``size`` branches; call it once the branches' heads are
    known (or with ``None``); it does nothing after the first call, or for a fork with nothing to share."""

    def __init__(self, parent: "Executor", size: int) -> None:
        self._parent, self._size = parent, size
        self._text, self._images = parent.text, tuple(parent.images)
        self._pending = size > 1 and bool(self._text) and parent.backend.capabilities.prefix_cache

    def __call__(self, heads: Sequence[str] | None = None) -> None:
        if not self._pending:
            return
        self._pending = False
        from backends.base import Prompt

        text = self._text
        if heads is not None and not self._images:
            text = committed_prefix(self._parent.backend.prompt_codec() or CHARACTERS, text, heads)
        if text:
            self._parent.cache_prefix(Prompt(text, self._images), f"fork({self._size})")

    def cancel(self) -> None:
        """The branches are done with (joined): nothing is left to commit for."""
        self._pending = False


def leading_text(value: object) -> str:
    """The text an appended value starts with: a string, or an expression's leading text leaves (``""`` for
    anything else; appending it reports the error)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Expr):
        return ""
    head = ""
    for leaf in value.flat():
        if not isinstance(leaf, Text):
            break
        head += leaf.value
    return head
