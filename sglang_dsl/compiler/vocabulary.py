"""A tokenizer's vocabulary as the byte strings its tokens stand for, and a byte trie over them.

A constraint automaton reads bytes, so every token is turned into the bytes it appends to the output:

* byte-level BPE (GPT-2 style, ``ByteLevel`` decoder): each character of the token stands for one byte through
  GPT-2's byte-to-unicode table (``Ġ`` is a space, ``Ċ`` a newline);
* SentencePiece (``Replace('▁', ' ')`` / ``Metaspace`` decoders): ``▁`` is a space, ``<0xXX>`` pieces (byte
  fallback) are the single byte ``XX``, anything else is its UTF-8 encoding;
* added tokens that are not special: their content, as UTF-8.

Special tokens (EOS, chat markers) and tokens that stand for no bytes are never allowed by a constraint; the EOS
ids are allowed where the automaton accepts. Tokenizers whose decoder is none of the above (word-level, WordPiece)
are refused with `VocabularyError`: their tokens do not map to a byte string.

SentencePiece decoders drop the space in front of the very first token of a decoded text; the automaton sees the
space (``▁Hello`` is `` Hello``), as the token stands for it in the middle of a text.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Sequence

import numpy as np

from sglang_dsl.compiler.errors import VocabularyError

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def gpt2_unicode_to_bytes() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable bytes stand for themselves, the others are shifted
    to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_GPT2 = gpt2_unicode_to_bytes()


@dataclass(eq=False)
class Vocabulary:
    """``token_bytes[i]``: what token ``i`` appends to the output, or None if a constraint never allows it
    (special and empty tokens). ``eos_token_ids`` are allowed exactly where an automaton accepts."""

    token_bytes: list[bytes | None]
    eos_token_ids: frozenset[int]
    kind: str = "bytes"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of every token's bytes and the EOS ids: the tokenizer's part of a compile-cache key."""
        h = hashlib.sha256()
        h.update(json.dumps(sorted(self.eos_token_ids)).encode())
        for b in self.token_bytes:
            if b is None:
                h.update(b"\xff\xfe")
            else:
                h.update(len(b).to_bytes(4, "little"))
                h.update(b)
        return h.hexdigest()[:32]

    @cached_property
    def single_byte_tokens(self) -> np.ndarray:
        """``[256]`` bool: which bytes are a token on their own."""
        out = np.zeros(256, dtype=bool)
        for b in self.token_bytes:
            if b is not None and len(b) == 1:
                out[b[0]] = True
        return out

    def prepare(self) -> "Vocabulary":
        """Build the per-tokenizer tables now (byte trie, fingerprint, sorted and by-bytes views, first-byte
        masks) rather than inside the first compile that needs them. Idempotent; returns ``self``."""
        for table in ("trie", "fingerprint", "sorted_tokens", "by_bytes", "first_byte_masks", "_suffix_table"):
            getattr(self, table)
        return self

    @cached_property
    def trie(self) -> "TokenTrie":
        with self._lock:
            return TokenTrie.build(self.token_bytes)

    @cached_property
    def extendable(self) -> np.ndarray:
        """``[V]`` bool: the token's bytes are a proper prefix of another token's (so a model could have merged
        more text into it). Jump-forward does not force such a token at the end of a forced string."""
        trie = self.trie
        out = np.zeros(self.size, dtype=bool)
        has_children = trie.num_children > 0
        tokens = trie.node_token
        mask = (tokens >= 0) & has_children
        out[tokens[mask]] = True
        for primary, dup in trie.duplicates:
            out[dup] = out[primary]
        return out

    @cached_property
    def by_bytes(self) -> dict[bytes, int]:
        """Token id of each byte string (the lowest id where several tokens spell the same bytes)."""
        out: dict[bytes, int] = {}
        for index, b in enumerate(self.token_bytes):
            if b and b not in out:
                out[b] = index
        return out

    @cached_property
    def sorted_tokens(self) -> tuple[list[bytes], np.ndarray]:
        """Every token's bytes in lexicographic order, and the token ids in that order: the tokens starting with
        a prefix form one contiguous range (see `tokens_with_prefix`)."""
        pairs = sorted((b, i) for i, b in enumerate(self.token_bytes) if b)
        return [b for b, _ in pairs], np.array([i for _, i in pairs], dtype=np.int64)

    @cached_property
    def lengths(self) -> np.ndarray:
        """``[V]`` int64: bytes per token (0 for special tokens)."""
        return np.array([len(b) if b else 0 for b in self.token_bytes], dtype=np.int64)

    def rests(self, node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the tokens strictly below trie ``node``: their ids, the id of the token spelling the bytes after
        the node (-1 if none) and the first of those bytes. Cached per node."""
        cache = self.__dict__.setdefault("_rests", {})
        found = cache.get(node)
        if found is None:
            _, ids = self.sorted_tokens
            starts, sizes, flat_bytes, flat_rests = self._suffix_table
            prefix = self.trie.prefix(node)
            lo, hi = self.tokens_with_prefix(prefix)
            below = np.arange(lo, hi)[sizes[lo:hi] > len(prefix)]
            at = starts[below] + len(prefix)
            found = cache[node] = (ids[below], flat_rests[at], flat_bytes[at].astype(np.int64))
        return found

    @cached_property
    def _suffix_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Over `sorted_tokens` laid end to end: where each token starts, its size, every byte, and at every
        position the id of the token spelling the rest of the token from there (-1: none)."""
        keys, _ = self.sorted_tokens
        sizes = np.array([len(k) for k in keys], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        flat_bytes = np.frombuffer(b"".join(keys), dtype=np.uint8)
        by_bytes = self.by_bytes
        flat_rests = np.array([by_bytes.get(k[i:], -1) for k in keys for i in range(len(k))], dtype=np.int64)
        return starts, sizes, flat_bytes, flat_rests

    @cached_property
    def first_byte_masks(self) -> np.ndarray:
        """``[256, ceil(V / 32)]`` uint32: packed masks of the tokens that start with each byte."""
        _, ids = self.sorted_tokens
        out = np.zeros((256, (self.size + 31) // 32), dtype=np.uint32)
        for b in range(256):
            lo, hi = self.tokens_with_prefix(bytes([b]))
            t = ids[lo:hi]
            np.bitwise_or.at(out[b], t >> 5, np.uint32(1) << (t & 31).astype(np.uint32))
        return out

    def tokens_with_prefix(self, prefix: bytes) -> tuple[int, int]:
        """The range [lo, hi) of `sorted_tokens` whose bytes start with ``prefix``."""
        from bisect import bisect_left

        keys, _ = self.sorted_tokens
        lo = bisect_left(keys, prefix)
        bound = prefix.rstrip(b"\xff")
        if not bound:
            return lo, len(keys)
        bound = bound[:-1] + bytes([bound[-1] + 1])
        return lo, bisect_left(keys, bound, lo)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, eos_token_ids: Iterable[int] | None = None) -> "Vocabulary":
        """From a ``tokenizers.Tokenizer``, the runtime's `Tokenizer`, or a transformers fast tokenizer."""
        backend = _backend_of(tokenizer)
        if eos_token_ids is None:
            eos_token_ids = getattr(tokenizer, "eos_token_ids", None)
            if eos_token_ids is None:
                eos = getattr(tokenizer, "eos_token_id", None)
                eos_token_ids = () if eos is None else (eos,)
        decoder = _decoder_description(backend)
        kind = _vocabulary_kind(decoder)
        size = backend.get_vocab_size(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        token_bytes: list[bytes | None] = [None] * size
        for token, index in backend.get_vocab(with_added_tokens=True).items():
            if index >= size:
                continue
            info = added.get(index)
            if info is not None:
                token_bytes[index] = None if info.special or not info.content else info.content.encode("utf-8")
            else:
                token_bytes[index] = _token_to_bytes(token, kind) or None
        return cls(token_bytes, frozenset(int(t) for t in eos_token_ids), kind)

    @classmethod
    def from_strings(cls, tokens: Sequence[str | bytes | None], eos_token_ids: Iterable[int] = ()) -> "Vocabulary":
        """A vocabulary given as the text (or bytes) of each token; None marks special tokens. For tests."""
        return cls([t.encode("utf-8") if isinstance(t, str) else t for t in tokens], frozenset(eos_token_ids))


def _backend_of(tokenizer: Any):
    for attr in ("_backend", "backend_tokenizer", "_tokenizer"):
        backend = getattr(tokenizer, attr, None)
        if backend is not None and hasattr(backend, "get_vocab"):
            return backend
    if hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "get_added_tokens_decoder"):
        return tokenizer
    raise VocabularyError(f"cannot read the vocabulary of a {type(tokenizer).__name__}")


def _decoder_description(backend) -> Any:
    decoder = backend.decoder
    if decoder is None:
        return None
    try:
        return json.loads(decoder.__getstate__())
    except Exception:  # a decoder that cannot describe itself
        return {"type": type(decoder).__name__}


def _vocabulary_kind(decoder: Any) -> str:
    parts = decoder.get("decoders", [decoder]) if isinstance(decoder, dict) else []
    types = [p.get("type") for p in parts if isinstance(p, dict)]
    if "ByteLevel" in types:
        return "byte_level"
    replaces_space = any(
        p.get("type") == "Replace" and (p.get("pattern") or {}).get("String") == "▁" for p in parts if isinstance(p, dict)
    )
    if "Metaspace" in types or replaces_space or "ByteFallback" in types:
        return "sentencepiece"
    name = "no decoder" if decoder is None else f"a {'/'.join(map(str, types)) or 'unknown'} decoder"
    raise VocabularyError(
        f"constrained decoding needs a byte-level BPE or SentencePiece tokenizer; this one has {name}, so its "
        "tokens do not map to bytes"
    )


def _token_to_bytes(token: str, kind: str) -> bytes:
    if kind == "byte_level":
        try:
            return bytes(_GPT2[c] for c in token)
        except KeyError:
            return token.encode("utf-8")
    m = _BYTE_FALLBACK.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")


@dataclass(frozen=True, eq=False)
class TokenTrie:
    """The tokens' byte strings as a trie in breadth-first order (children of a node are contiguous).

    Node 0 is the root. ``node_byte[n]``: the byte on the edge into ``n``; ``first_child[n]``/``num_children[n]``:
    its children; ``node_token[n]``: the token spelled by the path to ``n`` (-1 if none). Tokens with the same
    bytes as an earlier one are listed in ``duplicates`` as (primary, duplicate)."""

    node_byte: np.ndarray  # int64 [M]
    first_child: np.ndarray  # int64 [M]
    num_children: np.ndarray  # int64 [M]
    node_token: np.ndarray  # int64 [M]
    duplicates: tuple[tuple[int, int], ...]
    parent: np.ndarray  # int64 [M] (the root's parent is itself)

    def prefix(self, node: int) -> bytes:
        """The bytes on the path from the root to ``node``."""
        out = bytearray()
        while node:
            out.append(int(self.node_byte[node]))
            node = int(self.parent[node])
        return bytes(reversed(out))

    @property
    def num_nodes(self) -> int:
        return int(self.node_byte.shape[0])

    @classmethod
    def build(cls, token_bytes: Sequence[bytes | None]) -> "TokenTrie":
        first: dict[bytes, int] = {}
        duplicates = []
        for index, b in enumerate(token_bytes):
            if not b:
                continue
            if b in first:
                duplicates.append((first[b], index))
            else:
                first[b] = index
        # Breadth-first order = sort the distinct prefixes by (length, bytes); a node's children are then
        # contiguous and in byte order.
        prefixes = {b[:k] for b in first for k in range(1, len(b) + 1)}
        ordered = sorted(prefixes, key=lambda p: (len(p), p))
        ordered.insert(0, b"")
        position = {p: i for i, p in enumerate(ordered)}
        m = len(ordered)
        node_byte = np.zeros(m, dtype=np.int64)
        parent = np.zeros(m, dtype=np.int64)
        node_token = np.full(m, -1, dtype=np.int64)
        for i, p in enumerate(ordered[1:], start=1):
            node_byte[i] = p[-1]
            parent[i] = position[p[:-1]]
            token = first.get(p)
            if token is not None:
                node_token[i] = token
        num_children = np.bincount(parent[1:], minlength=m).astype(np.int64)
        first_child = np.zeros(m, dtype=np.int64)
        # children of node n start right after all children of nodes < n: nodes are sorted by parent already
        starts = np.cumsum(num_children) - num_children + 1
        first_child[:] = starts
        return cls(node_byte, first_child, num_children, node_token, tuple(duplicates), parent)
