"""What a fork commits to the prefix cache before its branches fan out: its stream's text, and the head the branches
start with alike.

Branches often open with the same words ("Approach 1:" / "Approach 2:"). They run concurrently, so without a
commit each would compute that shared head itself: the runtime holds a request back for another one computing a
shared uncached prefix only when that prefix is long (`runtime.scheduler.DEDUP_MIN_TOKENS`), since waiting a
step costs more than computing a few tokens twice. The fork's own prefill request is already there, so the
shared head rides along with it at no extra request.

A branch's *head* is the text it appends right after the fork, before its first step that is not text. The
commit is the longest common token prefix of ``base + head`` over the branches, each without its last token: a
model call right after it recomputes that token for its logits anyway, and text after it may merge with it when
the whole prompt is tokenized. It is then shortened until its text re-encodes to itself (`codec.stable_prefix`).
Heads are used at token granularity only: where a backend that does not say how it tokenizes splits them is
unknown, so their common text could end inside a token no branch has, computed for nothing.

The interpreter takes the heads from the branches' expressions (`sglang_dsl.lang.fork_commit`); the IR
interpreter and the batch planner from the graph (`branch_heads`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from sglang_dsl.compiler.choice_methods import common_length
from sglang_dsl.compiler.codec import PromptCodec, stable_prefix
from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import Fork, Placeholder, Text


def branch_heads(graph: Graph, fork: Fork, arguments: Mapping[str, Any] | None = None) -> list[str]:
    """The text each branch of ``fork`` appends before its first node that is not text, as far as it is known
    before the branches run: strings, and the arguments given in ``arguments``; any other value ends it."""
    return [_head(graph, branch, arguments or {}) for branch in fork.branches]


def _head(graph: Graph, branch: str, arguments: Mapping[str, Any]) -> str:
    head = ""
    for node in graph.stream_nodes(branch):
        if not isinstance(node, Text):
            break
        for part in node.parts:
            if isinstance(part, str):
                head += part
                continue
            producer = graph[part.node]
            if not (isinstance(producer, Placeholder) and producer.arg in arguments):
                return head
            head += str(arguments[producer.arg])
    return head


def shared_head(heads: Sequence[str]) -> str:
    """The text every branch's head starts with (character granularity)."""
    return os.path.commonprefix(list(heads)) if heads else ""


def committed_prefix(codec: PromptCodec, base: str, heads: Sequence[str]) -> str:
    """The text a fork of ``base`` into branches starting with ``heads`` commits (see the module docstring):
    ``base`` itself at character granularity, ``""`` when the branches share no stable token."""
    if not heads or codec.granularity != "token":
        return base
    encodings = [list(codec.encode(base + text))[:-1] for text in dict.fromkeys(heads)]
    length = min(common_length(encodings[0], ids) for ids in encodings)
    return stable_prefix(codec, encodings[0][:length])[0]
