"""Compiler passes over the IR: prefix-sharing plans and constraint compilation to token-level automata.

Constraints (no torch here; the runtime applies the masks, see docs/constraints.md):

- ``regex_syntax``: checks a regex (caret errors for look-around, back-references, ``\\b``, inner anchors...)
  and rewrites it for ``interegular``;
- ``automaton``: regex -> byte-level DFA (Glushkov + subset construction over character classes, UTF-8
  expansion, pruning);
- ``vocabulary``: a tokenizer's tokens as bytes (byte-level BPE, SentencePiece, byte fallback) and their trie;
- ``token_index``: per DFA state, the packed bitmask of allowed tokens;
- ``json_schema`` / ``numeric_ranges``: JSON Schema (dict, JSON text, pydantic) -> regex, exact numeric bounds;
- ``choices``: ``choices=[...]`` and ``dtype=int|float|str|bool`` -> regex (``gen_constraint``);
- ``grammar``: lark EBNF / GBNF -> incremental lexer + LALR matcher with cached masks;
- ``matcher`` / ``constraint``: the matcher protocol the runtime drives, and the compiler with its memory and
  disk caches keyed by (constraint, tokenizer).
"""
