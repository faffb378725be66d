"""The tracer: run a program's body against a state that records IR nodes instead of executing them.

`trace` calls the program function with a `TracingState` as ``s``. What the body appends (``s += ...``) is
lowered to nodes on the state's stream; ``s.fork(n)`` opens branch streams and ``join`` closes them; roles and
variable scopes used as context managers record their begin and end nodes. Arguments not given become
`Placeholder` nodes.

Values that only exist at run time (a generated variable ``s["x"]``, an argument left as a placeholder) are
handed to the body as `TracedValue` strings. Building text with them (``+``, f-strings, ``str()``,
``"".join``) works: the text node records a `Ref` to the value. Anything that looks at the value itself (``==``,
``if``, ``int()``, iterating, string methods) raises the internal `NeedsValue` signal, which `trace` catches and
records as a `Boundary`: the static part ends there, and eager execution takes over. So does anything else the
IR cannot hold (setting a variable from Python, reading the text, an image given as bytes...) and any exception
the body raises while tracing (e.g. ``eval()`` of a traced value): eager execution will raise it for real, or
not, once the values exist.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from types import CodeType, TracebackType
from typing import Any, Callable, Iterator, Sequence

from sglang_dsl.ir.graph import Graph
from sglang_dsl.ir.nodes import (
    CONSTRAINT_KINDS, JOIN_MODES, MAIN, Boundary, Constraint, Fork, Gen, Image, Join, Node, Placeholder, Ref,
    RoleBegin, RoleEnd, ScopeBegin, ScopeEnd, Select, Text,
)
from sglang_dsl.lang import exprs
from sglang_dsl.lang.choices import (
    ChoicesSamplingMethod, greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized,
)

# The choices methods a graph can name (custom methods cannot be rebuilt from a name, so they end the trace).
CHOICES_METHODS: dict[str, ChoicesSamplingMethod] = {
    m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
}
_MARKER = re.compile("\ue000([0-9]+)\ue001")


class NeedsValue(BaseException):
    """Internal signal: the traced program did something that needs run-time values (``needs``) or that the IR
    cannot represent. A `BaseException`, so a program's ``except Exception`` does not swallow it."""

    def __init__(self, reason: str, needs: Sequence[Ref] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.needs = tuple(needs)


def trace(function: Any, **kwargs: Any) -> Graph:
    """Trace the program ``function`` (an ``SglFunction``; its ``func``, ``arg_names`` and ``bind_arguments`` are
    used) into a `Graph` named after it. Arguments in ``kwargs`` or bound with ``bind`` are used as given; the
    others become placeholders. Raises ``TypeError`` for an argument the program does not take."""
    func = function.func
    unknown = set(kwargs) - set(function.arg_names)
    if unknown:
        raise TypeError(f"{func.__name__}() got unexpected arguments: {', '.join(sorted(unknown))}")
    tracer = _Tracer(Graph(func.__name__))
    given = {**kwargs, **function.bind_arguments}
    arguments = {name: given[name] if name in given else tracer.placeholder(name) for name in function.arg_names}
    try:
        func(TracingState(tracer, MAIN, {}), **arguments)
    except NeedsValue as signal:
        tracer.end(signal.reason, signal.needs, _line(signal.__traceback__, func.__code__))
    except Exception as err:  # noqa: BLE001 -- see the module docstring: eager execution decides
        tracer.end(f"raised {type(err).__name__}", tracer.unused(), _line(err.__traceback__, func.__code__))
    return tracer.graph


class TracedValue(str):
    """A run-time string seen at trace time (a generated variable, an argument): a string whose content is a
    marker for a `Ref`. Concatenation and formatting keep the marker (so text built from it reads the value);
    every operation that inspects the value raises `NeedsValue`."""

    ref: Ref

    def __new__(cls, marker: str, ref: Ref) -> TracedValue:
        value = super().__new__(cls, marker)
        value.ref = ref
        return value

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        if spec:
            raise NeedsValue(f"format spec {spec!r}", (self.ref,))
        return str.__str__(self)


class TracedList:
    """A run-time list seen at trace time (a variable gathered by a join, a gen with ``n > 1``): ``str()`` and
    f-strings give the marker of its `Ref`, as for `TracedValue`; any other use raises `NeedsValue`. Not a
    string, so ``"text" + value`` fails as it does at run time."""

    def __init__(self, marker: str, ref: Ref) -> None:
        self.marker = marker
        self.ref = ref

    def __str__(self) -> str:
        return self.marker

    def __format__(self, spec: str) -> str:
        if spec:
            raise NeedsValue(f"format spec {spec!r}", (self.ref,))
        return self.marker

    def __getattr__(self, name: str) -> Any:
        raise NeedsValue(f".{name}", (self.ref,))


def _needs_value(operation: str) -> Callable[..., Any]:
    def inspect(self: TracedValue | TracedList, *args: Any, **kwargs: Any) -> Any:
        raise NeedsValue(operation, (self.ref,))

    return inspect


_INSPECTING = {
    "__eq__": "==", "__ne__": "!=", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">=",
    "__bool__": "truth test", "__len__": "len()", "__iter__": "iteration", "__contains__": "in",
    "__getitem__": "indexing", "__hash__": "hash()", "__int__": "int()", "__float__": "float()",
    "__complex__": "complex()", "__repr__": "repr()", "__mul__": "*", "__rmul__": "*", "__mod__": "%",
    "__reduce__": "copy or pickle", "__reduce_ex__": "copy or pickle", "__getnewargs__": "copy or pickle",
}
for _name, _operation in _INSPECTING.items():
    setattr(TracedValue, _name, _needs_value(_operation))
    setattr(TracedList, _name, _needs_value(_operation))
for _name in dir(str):
    if not _name.startswith("_"):
        setattr(TracedValue, _name, _needs_value(f".{_name}()"))
TracedList.__add__ = TracedList.__radd__ = _needs_value("+")  # type: ignore[attr-defined]


class _Tracer:
    """Builds the graph: owns the node names, the table of traced values, and the lowering of expressions."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.values: list[Ref] = []  # traced value i is the marker "\ue000{i}\ue001"
        self.read: dict[int, Ref] = {}  # values read from the state (s["x"]) that no node has used yet

    def value(self, ref: Ref, kind: type[TracedValue | TracedList] = TracedValue) -> TracedValue | TracedList:
        self.values.append(ref)
        return kind(f"\ue000{len(self.values) - 1}\ue001", ref)

    def placeholder(self, arg: str) -> TracedValue:
        node = self.graph.create(Placeholder, arg, arg=arg)
        return self.value(Ref(node.name, arg))

    def variable(self, ref: Ref) -> TracedValue | TracedList:
        """The value of a variable read from the state: a list if ``ref``'s producer makes one."""
        producer = self.graph[ref.node]
        listed = isinstance(producer, Join) or (isinstance(producer, Gen) and dict(producer.params).get("n", 1) > 1)
        value = self.value(ref, TracedList if listed else TracedValue)
        self.read[len(self.values) - 1] = ref
        return value

    def unused(self) -> list[Ref]:
        """The variables read from the state and not used by any node yet: when the program raises, what it
        was doing with them is the likely cause."""
        return list(self.read.values())

    def end(self, reason: str, needs: Sequence[Ref], line: int | None) -> None:
        self.graph.create(Boundary, "boundary", reason=reason, needs=tuple(dict.fromkeys(needs)), line=line)

    def parts(self, text: str) -> tuple[str | Ref, ...]:
        """``text`` split at the markers of traced values; empty strings dropped."""
        pieces = _MARKER.split(text)
        for index in pieces[1::2]:
            self.read.pop(int(index), None)
        parts = [self.values[int(p)] if i % 2 else p for i, p in enumerate(pieces)]
        return tuple(p for p in parts if p != "")

    def constant(self, value: Any, what: str) -> None:
        """Raise `NeedsValue` if ``value`` (a string, or a tuple of them) holds a traced value."""
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str):
                refs = [p for p in self.parts(text) if isinstance(p, Ref)]
                if refs:
                    raise NeedsValue(f"{what} depends on a run-time value", refs)

    def append(self, state: TracingState, value: Any) -> None:
        """Lower ``value`` (a string or expression) to nodes on ``state``'s stream. All leaves are checked before
        any node is added, so an expression that cannot be traced adds nothing."""
        expr = exprs.as_expr(value)
        for make in [self.lower(leaf) for leaf in expr.flat()]:
            node = make(state.stream)
            if node is not None:
                state.vars.update((var, Ref(node.name, var)) for var in node.writes)

    def lower(self, leaf: exprs.Expr) -> Callable[[str], Node | None]:
        """A function that appends ``leaf``'s node on a stream (``None`` for empty text)."""
        create = self.graph.create
        if isinstance(leaf, exprs.Text):
            parts = self.parts(leaf.value)
            return lambda stream: create(Text, stream=stream, parts=parts) if parts else None
        if isinstance(leaf, exprs.Gen):
            params, constraint = self.gen_params(leaf)
            return lambda stream: create(Gen, _base("gen", leaf.name), stream, var=leaf.name, params=params,
                                         constraint=constraint)
        if isinstance(leaf, exprs.Select):
            self.constant(leaf.name, "the variable name")
            self.constant(leaf.choices, "the choice list")
            if CHOICES_METHODS.get(leaf.choices_method.name) is not leaf.choices_method:
                raise NeedsValue(f"select with the custom choices method {leaf.choices_method!r}")
            return lambda stream: create(Select, _base("select", leaf.name), stream, var=leaf.name,
                                         choices=leaf.choices, method=leaf.choices_method.name,
                                         temperature=leaf.temperature)
        if isinstance(leaf, exprs.Image):
            if leaf.source.startswith("<"):  # bytes or a PIL image (`sglang_dsl.lang.primitives.image`)
                raise NeedsValue(f"image from a {leaf.source} value, not a file")
            return lambda stream: create(Image, stream=stream, source=leaf.source)
        if isinstance(leaf, (exprs.RoleBegin, exprs.RoleEnd)):
            kind = RoleBegin if isinstance(leaf, exprs.RoleBegin) else RoleEnd
            return lambda stream: create(kind, stream=stream, role=leaf.role)
        if isinstance(leaf, exprs.VarScopeBegin):
            self.constant(leaf.name, "the variable name")
            return lambda stream: create(ScopeBegin, stream=stream, var=leaf.name)
        if isinstance(leaf, exprs.VarScopeEnd):
            self.constant(leaf.name, "the variable name")
            return lambda stream: create(ScopeEnd, f"scope_{leaf.name}", stream, var=leaf.name)
        raise NeedsValue(f"{leaf.label}, which the IR does not model")

    def gen_params(self, leaf: exprs.Gen) -> tuple[tuple[tuple[str, Any], ...], Constraint | None]:
        self.constant(leaf.name, "the variable name")
        given = leaf.params.given()
        for key, value in given.items():
            self.constant(value, f"gen parameter {key}")
        constraints = [Constraint(k, given.pop(k)) for k in CONSTRAINT_KINDS if k in given]
        if len(constraints) > 1:
            raise NeedsValue(f"gen with several constraints ({', '.join(c.kind for c in constraints)})")
        return tuple(sorted(given.items())), (constraints[0] if constraints else None)

    def fork(self, state: TracingState, size: int) -> TracingGroup:
        node = self.graph.create(Fork, "fork", state.stream, n=size)
        children = [TracingState(self, branch, dict(state.vars)) for branch in node.branches]
        return TracingGroup(self, state, node, children)

    def join(self, group: TracingGroup, mode: str) -> None:
        parent = group.parent
        gathered: list[str] = []
        if mode == "gather_variable":
            for child in group.states:
                gathered += [v for v in child.vars if v not in parent.vars and v not in gathered]
        node = self.graph.create(Join, "join", parent.stream, fork=group.fork.name, mode=mode,
                                 vars=tuple(gathered))
        parent.vars.update((var, Ref(node.name, var)) for var in node.writes)


def _base(kind: str, var: str | None) -> str:
    return kind if var is None else f"{kind}_{var}"


def _line(tb: TracebackType | None, code: CodeType) -> int | None:
    """The line offset, in ``code``'s function, of the deepest frame of ``tb`` running ``code``."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code is code:
            line = tb.tb_lineno - code.co_firstlineno
        tb = tb.tb_next
    return line


class TracingState:
    """The ``s`` a traced program body sees: the program-state surface, recording instead of running.

    ``s += expr`` and role/scope helpers append nodes; ``s[name]`` returns a `TracedValue`; ``fork`` returns a
    `TracingGroup`. Whatever reads the program's results (``text()``, ``messages()``, ``get_meta_info``, ``name in
    s``, ``s[name] = value``) raises `NeedsValue`, ending the static part."""

    def __init__(self, tracer: _Tracer, stream: str, vars: dict[str, Ref]) -> None:
        self._tracer = tracer
        self.stream = stream
        self.vars = vars

    def __iadd__(self, value: Any) -> TracingState:
        if value is None:
            raise ValueError("cannot append None")
        self._tracer.append(self, value)
        return self

    def __getitem__(self, name: str) -> TracedValue | TracedList:
        ref = self.vars.get(name)
        if ref is None:
            raise NeedsValue(f"s[{name!r}], a variable the traced program has not set")
        return self._tracer.variable(ref)

    get_var = __getitem__

    def __setitem__(self, name: str, value: Any) -> None:
        raise NeedsValue(f"s[{name!r}] = ... (a variable set from Python)")

    set_var = __setitem__

    def __contains__(self, name: object) -> bool:
        raise NeedsValue(f"{name!r} in s")

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> TracingGroup:
        return self._tracer.fork(self, size)

    @contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator[TracingState]:
        group = self.fork(1)
        yield group[0]
        group.join()

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self += exprs.VarScopeBegin(name)
        yield
        self += exprs.VarScopeEnd(name)

    def system(self, expr: Any = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role("assistant", expr)

    def _role(self, role: str, expr: Any) -> Any:
        if expr is None:
            return self._turn(role)
        self += exprs.ExprList.of(exprs.RoleBegin(role), expr, exprs.RoleEnd(role))
        return exprs.ExprList(())  # as the program state does, so that ``s += s.user(x)`` appends once

    @contextmanager
    def _turn(self, role: str) -> Iterator[None]:
        self += exprs.RoleBegin(role)
        yield
        self += exprs.RoleEnd(role)

    def sync(self) -> None:
        """Nothing to wait for while tracing."""

    def text(self) -> str:
        raise NeedsValue("s.text()")

    def messages(self) -> list[dict[str, Any]]:
        raise NeedsValue("s.messages()")

    def variables(self) -> dict[str, Any]:
        raise NeedsValue("s.variables()")

    def error(self) -> BaseException | None:
        raise NeedsValue("s.error()")

    def get_meta_info(self, name: str) -> Any:
        raise NeedsValue(f"s.get_meta_info({name!r})")

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        raise NeedsValue("s.text_iter()")

    def text_async_iter(self, var_name: str | None = None, return_meta_data: bool = False) -> Any:
        raise NeedsValue("s.text_async_iter()")

    def __repr__(self) -> str:
        return f"<TracingState of {self._tracer.graph.name}, stream {self.stream}>"


class TracingGroup:
    """What ``s.fork(n)`` returns while tracing: the branch states, ``+=`` onto all of them, and ``join``."""

    def __init__(self, tracer: _Tracer, parent: TracingState, fork: Fork, states: list[TracingState]) -> None:
        self._tracer = tracer
        self.parent = parent
        self.fork = fork
        self.states = states

    def __getitem__(self, i: int) -> TracingState:
        return self.states[i]

    def __setitem__(self, i: int, state: TracingState) -> None:
        """Completes ``forks[i] += expr`` (which appends to ``forks[i]``, then stores it back)."""
        if state is not self.states[i]:
            raise TypeError("fork branches cannot be replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[TracingState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> TracingGroup:
        """As the program state's group: a callable ``i -> expr``, one expression per branch, or one for all."""
        if callable(other):
            values = [other(i) for i in range(len(self.states))]
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} expressions for {len(self.states)} fork branches")
            values = list(other)
        else:
            values = [other] * len(self.states)
        for state, value in zip(self.states, values):
            state += value
        return self

    def join(self, mode: str = "gather_variable") -> None:
        if mode not in JOIN_MODES:
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', not {mode!r}")
        self._tracer.join(self, mode)
