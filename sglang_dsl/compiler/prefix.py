"""Constant-prefix analysis: the text every run of a traced program starts with, whatever its arguments.

`constant_prefix` walks the main stream in program order and keeps what is argument-independent: string parts
of text nodes, variable scopes (they add no text) and, given the model's chat template, role openings and
closings (whose rendering depends only on the turns before them, which are then constant too). It stops at the
first node whose text is not known before running: a text part reading an argument or a generated variable, a
``gen`` or ``select``, an image, a ``fork`` (branches diverge there), the dynamic boundary, or a role without a
template. That node is where the prefix *ends*; a text node that starts with constant strings contributes them.

At token granularity the prefix is the tokens that stay the same whatever follows: when the prefix's end appends
text right after it (an argument, a generated value, a choice), the last token may merge with that text when the
whole prompt is tokenized, so it is not counted. When the prefix is exactly the prompt of the request at its end
(a ``gen`` or ``select`` right after constant text, or a ``fork``'s cached prefix), every token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import (
    MAIN, Fork, Gen, Node, Placeholder, Ref, RoleBegin, RoleEnd, ScopeBegin, ScopeEnd, Select, Text,
)

Encode = Callable[[str], Sequence[int]]

# Nodes whose request's prompt is exactly the text before them: a prefix ending there is a whole prompt.
_REQUEST_KINDS = (Gen, Select, Fork)


@dataclass(frozen=True)
class PrefixInfo:
    """The argument-independent prefix of a program.

    ``text``: the prefix itself. ``nodes``: names of the nodes wholly inside it, in program order (placeholders
    are inputs, not text, and never listed). ``end``: the first node not wholly inside (it may contribute leading
    constant text), or ``None`` when the whole main stream is constant. ``reason``: why the prefix stops there.
    ``tokens``: with an ``encode`` callable, how many of the prefix's tokens are stable (see the module
    docstring); ``None`` otherwise."""

    text: str
    nodes: tuple[str, ...]
    end: str | None
    reason: str
    tokens: int | None = None

    def __contains__(self, node: object) -> bool:
        return node in self.nodes


def constant_prefix(graph: Graph, encode: Encode | None = None, *, template: Any = None) -> PrefixInfo:
    """The constant prefix of ``graph`` (see the module docstring). ``encode`` maps text to token ids (a
    backend's tokenizer); ``template`` is a chat template (`backends.base.ChatTemplate`) used to render role
    nodes, which otherwise end the prefix."""
    return bound_prefix(graph, {}, encode, template=template)


def bound_prefix(graph: Graph, arguments: Mapping[str, Any], encode: Encode | None = None, *,
                 template: Any = None) -> PrefixInfo:
    """The prefix known once ``arguments`` (values of some or all of the graph's placeholders) are bound: as
    `constant_prefix`, but a text part reading a bound argument is its ``str()``. With every argument bound it
    is the prompt of the program's first request (or its text up to the dynamic boundary)."""
    walk = _Walk(graph, arguments, template)
    for node in graph:
        if node.stream != MAIN or isinstance(node, Placeholder):
            continue
        reason = walk.step(node)
        if reason is not None:
            return walk.result(node, reason, encode)
    return walk.result(None, "the whole program is constant", encode)


class _Walk:
    """The constant text so far, and the chat turns it has completed (for rendering the next role)."""

    def __init__(self, graph: Graph, arguments: Mapping[str, Any], template: Any) -> None:
        self.graph = graph
        self.arguments = arguments
        self.template = template
        self.text = ""
        self.nodes: list[str] = []
        self.messages: list[dict[str, str]] = []
        self.turn_start: int | None = None
        self.partial = False

    def step(self, node: Node) -> str | None:
        """Absorb ``node`` and return ``None``, or return why the prefix ends at it (after absorbing the leading
        constant text of a text node)."""
        if isinstance(node, Text):
            for part in node.parts:
                if not isinstance(part, str):
                    if not self.bound(part):
                        self.partial = True
                        return f"%{node.name} reads %{part.node} ({part.var!r})"
                    part = str(self.arguments[part.var])
                self.text += part
        elif isinstance(node, (ScopeBegin, ScopeEnd)):
            pass
        elif isinstance(node, (RoleBegin, RoleEnd)):
            if self.template is None:
                return f"%{node.name} renders a {node.role} turn through the model's chat template"
            self.role(node)
        else:
            return f"%{node.name} is a {node.op}"
        self.nodes.append(node.name)
        return None

    def bound(self, ref: Ref) -> bool:
        return isinstance(self.graph[ref.node], Placeholder) and ref.var in self.arguments

    def role(self, node: RoleBegin | RoleEnd) -> None:
        from sglang_dsl.lang.roles import turn_closing, turn_opening

        if isinstance(node, RoleBegin):
            self.text += turn_opening(self.template, self.messages, node.role)
            self.turn_start = len(self.text)
            return
        content = self.text[self.turn_start or 0:].lstrip()
        self.text += turn_closing(self.template, self.messages, node.role)
        self.messages.append({"role": node.role, "content": content})

    def result(self, end: Node | None, reason: str, encode: Encode | None) -> PrefixInfo:
        tokens = None
        if encode is not None and self.text:
            ids = list(encode(self.text))
            whole_prompt = end is None or (isinstance(end, _REQUEST_KINDS) and not self.partial)
            tokens = len(ids) if whole_prompt else max(len(ids) - 1, 0)
        elif encode is not None:
            tokens = 0
        return PrefixInfo(self.text, tuple(self.nodes), None if end is None else end.name, reason, tokens)
