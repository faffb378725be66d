"""A schema's language with rules (recursive ``$ref``) as an LALR(1) grammar for `grammar.GrammarMatcher`.

Each rule becomes a lark rule; inside a rule, every largest piece without references becomes one terminal whose
automaton comes from `schema_ir.to_dfa` (lark sees a placeholder pattern), so the parser only works where the
nesting is. A piece that may be empty becomes an optional terminal of its non-empty texts (terminals never match
the empty string). A grammar that is not LALR(1) is refused with `SchemaError`.
"""

from __future__ import annotations

from sglang_dsl.compiler.errors import GrammarError, SchemaError
from sglang_dsl.compiler.lark_grammar import Grammar, grammar_with_terminals
from sglang_dsl.compiler.schema_ir import (
    EMPTY, Alt, Members, Minus, Node, Ref, Rep, SepList, Seq, refs)
from sglang_dsl.compiler.schema_automaton import is_empty, nullable, to_dfa


def rules_to_grammar(start: Node, rules: dict[str, Node]) -> Grammar:
    """The grammar whose start symbol is ``start`` and whose rule ``name`` is ``rules[name]``."""
    emitter = _Emitter()
    lines = [f"start: {emitter.expression(start)}"]
    lines += [f"{name}: {emitter.expression(body)}" for name, body in rules.items()]
    lines += [f"{name}: /\\u0001{name}\\u0002/" for name in emitter.terminals.values()]
    source = "\n".join(lines) + "\n"
    dfas = {name: to_dfa(node) for node, name in emitter.terminals.items()}
    try:
        return grammar_with_terminals(source, dfas)
    except GrammarError as err:
        raise SchemaError("#", f"the recursive schema does not make an LALR(1) grammar: {err}") from None


class _Emitter:
    def __init__(self) -> None:
        self.terminals: dict[Node, str] = {}

    def terminal(self, node: Node) -> str:
        name = self.terminals.get(node)
        if name is None:
            name = self.terminals[node] = f"T{len(self.terminals)}"
        return name

    def expression(self, node: Node) -> str:
        """Lark EBNF for ``node`` (possibly empty text, which lark reads as the empty sequence)."""
        if not refs(node):
            if not nullable(node):
                return self.terminal(node)
            rest = Minus(node, EMPTY)
            return "" if is_empty(rest) else f"{self.terminal(rest)}?"
        if isinstance(node, Ref):
            return node.name
        if isinstance(node, Members):
            return self.expression(node.expanded())
        if isinstance(node, SepList):
            return self.expression(Seq((node.item, Rep(Seq((node.sep, node.item)), 0, None))))
        if isinstance(node, Seq):
            return " ".join(e for e in (self.expression(p) for p in self.groups(node.parts)) if e)
        if isinstance(node, Alt):
            options = [self.expression(o) for o in node.options]
            return "(" + " | ".join(options) + ")"
        if isinstance(node, Rep):
            item = self.expression(node.item)
            if node.high is None:
                return f"({item})~{node.low} ({item})*" if node.low else f"({item})*"
            return f"({item})~{node.low}..{node.high}"
        raise SchemaError("#", "a recursive reference inside an intersection or difference is not supported")

    @staticmethod
    def groups(parts: tuple[Node, ...]) -> list[Node]:
        """Consecutive parts without references joined into one (one terminal instead of several)."""
        out: list[Node] = []
        run: list[Node] = []
        for p in parts:
            if refs(p):
                if run:
                    out.append(Seq(tuple(run)) if len(run) > 1 else run[0])
                    run = []
                out.append(p)
            else:
                run.append(p)
        if run:
            out.append(Seq(tuple(run)) if len(run) > 1 else run[0])
        return out
