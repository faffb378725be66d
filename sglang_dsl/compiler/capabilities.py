"""The capability check: before a program runs, find every node its backend cannot run.

`missing_capabilities` walks a traced graph (`sglang_dsl.ir`) and returns one `MissingCapability` per node and
capability it lacks: a gen's constraint (``regex``, ``dtype``, ``json_schema``, ``grammar``), logprob options,
sampling parameters the backend does not take, a select the backend cannot decide (or not with the node's
choices method), an image, and for chat-only backends (``completion=False``) a gen or select that does not open
an assistant turn. `check_run` is what ``run()`` / ``run_batch()`` call before the first request: it traces the
program with the run's arguments and raises `UnsupportedFeatureError` naming the first node (and listing the
others). What follows a trace boundary cannot be seen here; `check_call` makes the same checks for one call as it
runs (`missing_for_gen` / `missing_for_select`, and `missing_for_chat_position` for chat APIs).

Backends are duck-typed (``capabilities`` and ``name``): ``sglang_dsl`` does not import ``backends``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import Fork, Gen, Image, Join, Node, RoleBegin, RoleEnd, Select, Text
from sglang_dsl.lang.errors import UnsupportedFeatureError
from sglang_dsl.lang.params import LOGPROB_FIELDS, SamplingParams

if TYPE_CHECKING:
    from backends.base import Backend, Capabilities

_CONSTRAINT_CAPABILITY = {"regex": "regex", "dtype": "regex", "json_schema": "json_schema", "grammar": "grammar"}


@dataclass(frozen=True)
class MissingCapability:
    """Node ``node`` (IR name; ``label`` as errors spell it, e.g. ``gen('answer')``) needs ``capability``, which
    the backend lacks; ``detail`` says what in the node needs it."""

    node: str
    label: str
    capability: str
    detail: str


def missing_for_gen(params: SamplingParams, capabilities: "Capabilities") -> list[tuple[str, str]]:
    """``(capability, detail)`` for each thing a gen with ``params`` (run defaults merged in) needs and lacks."""
    missing = []
    given = params.given()
    for key, capability in _CONSTRAINT_CAPABILITY.items():
        if key in given and not getattr(capabilities, capability):
            missing.append((capability, f"the gen is constrained by {key}"))
    if not capabilities.logprobs:
        asked = [k for k in LOGPROB_FIELDS if given.get(k)]
        if asked:
            missing.append(("logprobs", f"the gen asks for {', '.join(asked)}"))
    if capabilities.sampling is not None:
        unsupported = sorted(set(given) - set(LOGPROB_FIELDS) - set(_CONSTRAINT_CAPABILITY) - capabilities.sampling)
        if unsupported:
            missing.append(("sampling parameters", f"the backend does not take {', '.join(unsupported)} "
                                                   f"(it takes {', '.join(sorted(capabilities.sampling))})"))
    return missing


def missing_for_select(method: str, capabilities: "Capabilities") -> list[tuple[str, str]]:
    """``(capability, detail)`` for a select scored with the choices method named ``method``."""
    if not capabilities.select:
        return [("select", "the backend cannot choose between alternatives")]
    if capabilities.select_methods is not None and method not in capabilities.select_methods:
        return [("select method", f"choices_method {method} (it honours "
                                  f"{', '.join(sorted(capabilities.select_methods))})")]
    return []


def missing_capabilities(graph: Graph, capabilities: "Capabilities", defaults: SamplingParams = SamplingParams(),
                         speculative: bool = False) -> list[MissingCapability]:
    """Every (node, capability) of ``graph``'s static part that ``capabilities`` lack, in program order. Gens
    take ``defaults`` (the run's sampling arguments) under their own parameters. ``speculative`` (the program
    has ``num_api_spec_tokens``) lets a chat-only backend continue an assistant turn that already has text."""
    found: list[MissingCapability] = []
    turns: dict[str, tuple[str | None, bool]] = {"main": (None, False)}  # stream -> (open role, turn still empty)

    def report(node: Node, label: str, problems: list[tuple[str, str]]) -> None:
        found.extend(MissingCapability(node.name, label, capability, detail) for capability, detail in problems)

    for node in graph:
        role, empty = turns.get(node.stream, (None, False))
        if isinstance(node, Gen):
            params = _gen_params(node).merged_over(defaults)
            report(node, _label("gen", node.var), missing_for_gen(params, capabilities))
            report(node, _label("gen", node.var), missing_for_chat_position(capabilities, role, empty, speculative))
        elif isinstance(node, Select):
            report(node, _label("select", node.var), missing_for_select(node.method, capabilities))
            report(node, _label("select", node.var),
                   missing_for_chat_position(capabilities, role, empty, speculative))
        elif isinstance(node, Image) and not capabilities.images:
            report(node, f"image({node.source!r})", [("images", "the backend takes text only")])
        elif isinstance(node, Fork):
            turns.update((branch, (role, empty)) for branch in node.branches)
        turns[node.stream] = _after(node, role, empty)
    return found


def check_run(function: Any, arguments: Mapping[str, Any], defaults: SamplingParams, backend: "Backend") -> None:
    """Raise `UnsupportedFeatureError` (naming the program and node) if ``backend`` cannot run ``function`` on
    ``arguments``. Only backends with `Capabilities.restricted` are checked (tracing runs the body's Python once
    more, as SGLang's precache-with-tracing does); a body that cannot be traced is left to the checks made as it
    runs."""
    capabilities = backend.capabilities
    if not capabilities.restricted():
        return
    from sglang_dsl.ir.tracer import trace

    try:
        graph = trace(function, **arguments)
    except Exception:  # noqa: BLE001 -- the run itself reports what the body does wrong
        return
    missing = missing_capabilities(graph, capabilities, defaults, speculative=bool(function.num_api_spec_tokens))
    if missing:
        raise unsupported(missing, getattr(backend, "name", type(backend).__name__)).located(function.name, None)


def unsupported(missing: list[MissingCapability], backend: str) -> UnsupportedFeatureError:
    """The error for ``missing``: the first node and capability, then the others; ``error.missing`` has them all."""
    first, rest = missing[0], missing[1:]
    detail = first.detail + "".join(f"; also node {m.label}: {m.capability} ({m.detail})" for m in rest)
    error = UnsupportedFeatureError(first.capability, backend, detail=detail, node=first.label)
    error.missing = missing
    return error


def check_call(backend: "Backend", node: str, params: SamplingParams | None, method: str, role: str | None,
               empty: bool, speculative: bool) -> None:
    """The check of one call as it runs (past a trace boundary): a gen with ``params`` (else a select scored with
    choices method ``method``) at a position in the chat (``role``, ``empty`` as `missing_for_chat_position`
    takes them). Raises `UnsupportedFeatureError` naming ``node``."""
    capabilities = backend.capabilities
    if not capabilities.restricted():
        return
    problems = (missing_for_gen(params, capabilities) if params is not None
                else missing_for_select(method, capabilities))
    problems += missing_for_chat_position(capabilities, role, empty, speculative)
    if problems:
        raise refusal(node, problems, backend.name)


def refusal(node: str, problems: list[tuple[str, str]], backend: str) -> UnsupportedFeatureError:
    """`unsupported` for one call's ``(capability, detail)`` problems (``node``: the call's node label)."""
    return unsupported([MissingCapability(node, node, c, d) for c, d in problems], backend)


def _gen_params(node: Gen) -> SamplingParams:
    values: dict[str, Any] = dict(node.params)
    if node.constraint is not None:
        values[node.constraint.kind] = node.constraint.value
    return SamplingParams(**values)


def missing_for_chat_position(capabilities: "Capabilities", role: str | None, empty: bool,
                              speculative: bool = False) -> list[tuple[str, str]]:
    """A chat-only backend (``completion`` False) generates only as the assistant: at the start of an assistant
    turn (``empty``: nothing written in it yet), or anywhere in one if it can ``continue_assistant`` or
    ``speculative``-ly. ``role`` is the open turn's (None: none)."""
    if capabilities.completion or (role == "assistant" and (empty or speculative
                                                             or capabilities.continue_assistant)):
        return []
    where = ("outside any chat turn" if role is None else f"in a {role} turn" if role != "assistant"
             else "after text already in the assistant turn (only num_api_spec_tokens can continue it)")
    return [("completion", f"a chat model only answers as the assistant, at the start of its turn; this node is "
                           f"{where}")]


def _after(node: Node, role: str | None, empty: bool) -> tuple[str | None, bool]:
    """The stream's (open role, turn still empty) after ``node``."""
    if isinstance(node, RoleBegin):
        return node.role, True
    if isinstance(node, RoleEnd):
        return None, False
    if isinstance(node, (Text, Gen, Select, Image)) or (isinstance(node, Join) and node.mode != "gather_variable"):
        return role, False
    return role, empty


def _label(kind: str, var: str | None) -> str:
    return f"{kind}({var!r})" if var else f"{kind}()"
