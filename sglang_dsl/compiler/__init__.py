"""Compiler passes over the IR: prefix-sharing plans and constraint compilation to token-level automata.

Plans (see docs/compiler.md; frozen data with text and JSON forms, `plan_data` / `plan_text`):

- ``prefix``: the constant (argument-independent) prefix of a graph, and the prefix once arguments are bound;
- ``batch_plan``: ``run_batch`` over a token trie of the bound prompts, each shared prefix prefilled once;
- ``program_plan``: fork, select and constraint plans and segments (``segments``, ``constraint_plan``);
- ``codec``: how plans count tokens (a backend's tokenizer, or characters);
- ``choice_methods``: how ``select`` decides from per-choice token logprobs and which tokens are a choice's
  (shared by per-node scoring in ``backends.scoring`` and the engine's select steps of program requests).

Constraints (no torch here; the runtime applies the masks, see docs/constraints.md):

- ``regex_syntax``: checks a regex (caret errors for look-around, back-references, ``\\b``, inner anchors...)
  and rewrites it for ``interegular``;
- ``automaton``: regex -> byte-level DFA (Glushkov + subset construction over character classes, UTF-8
  expansion, pruning);
- ``vocabulary``: a tokenizer's tokens as bytes (byte-level BPE, SentencePiece, byte fallback) and their trie;
- ``token_index``: per DFA state, the packed bitmask of allowed tokens;
- ``json_schema`` / ``numeric_ranges``: JSON Schema (dict, JSON text, pydantic) -> regex, exact numeric bounds;
- ``choices``: ``choices=[...]`` and ``dtype=int|float|str|bool`` -> regex (``gen_constraint``);
- ``grammar``: lark EBNF / GBNF -> incremental lexer + LALR matcher with cached masks (``lalr_stack``: its
  parser stacks, and masks kept under the top of the stack they read);
- ``matcher`` / ``constraint``: the matcher protocol the runtime drives, and the compiler with its memory and
  disk caches keyed by (constraint, tokenizer).
"""
