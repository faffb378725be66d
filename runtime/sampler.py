"""Choosing the next token of every running request at once, and the log-probabilities reported with tokens.

Per step the scheduler hands `sample` the batch's last-position logits ``[B, V]``, a `SamplingBatch` (the
requests' sampling parameters as per-row tensors, built once per batch composition) and each request's generated
ids so far. Everything is vectorized over the batch; a feature no row uses costs nothing (an all-greedy batch
without penalties is one argmax). The order of operations, per row:

1. penalties on the raw logits: ``frequency`` (minus f * count of each token in the output so far), ``presence``
   (minus p if it occurs in the output), ``repetition`` (HF semantics, over prompt and output tokens: a positive
   logit is divided by r, a negative one multiplied by r);
2. ``min_new_tokens``: while fewer tokens than that have been generated, EOS ids (unless ``ignore_eos``) and the
   row's ``stop_token_ids`` are set to -inf;
3. greedy rows (``temperature < 1e-6`` or ``top_k == 1``) take the argmax of these penalized logits;
4. the other rows: divide by the temperature, then keep the ``top_k`` most likely tokens, of those the smallest
   set whose renormalized mass reaches ``top_p``, and drop tokens whose probability is below ``min_p`` times the
   most likely one's. Truncation is by value: tokens tied with the last kept one are kept too, so the result
   never depends on how a sort orders ties;
5. draw with the Gumbel-max trick: ``argmax(logit / T + g)`` with ``g = -log(-log(u))`` and ``u`` uniform in
   (0, 1), one per (row, token). That is an exact draw from ``softmax(logit / T)`` restricted to the kept set.
   When every sampled row truncates, noise is made only for the longest kept prefix of the sorted tokens.

Randomness. Rows without a seed take ``u`` from one ``torch.Generator`` (the batch's, else torch's default).
Rows with a seed take it from a counter-based hash of (seed, step, token id), where step is the number of tokens
the request has generated so far; a seeded request therefore samples the same tokens whatever else is in the
batch and at whatever row. The hash works on 32-bit values held in int64 tensors, and every multiplier is below
2**31, so no product of a 32-bit value reaches 2**63 and the arithmetic is exact on every device:

    mix32(h)     = h ^= h >> 16; h = h * 0x21F0AAAD mod 2**32; h ^= h >> 15; h = h * 0x735A2D97 mod 2**32;
                   h ^= h >> 15          (xorshift-multiply rounds: a bijection of 32-bit values, good avalanche)
    key(seed)    = mix32(lo32(seed) ^ mix32(hi32(seed) ^ 0x9E3779B9))           (seed taken mod 2**64)
    row(seed, s) = mix32(key(seed) ^ mix32((s + 0x632BE5AB) mod 2**32))
    h            = mix32(row(seed, s) ^ (token * 0x61C88647 mod 2**32))
    u            = ((h >> 9) + 0.5) / 2**23                                      (exact in float32)

Within a row distinct tokens get distinct ``h`` (both maps are bijections), so no two tokens share noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from runtime.requests import SamplingParams

GREEDY_TEMPERATURE = 1e-6  # temperatures below this mean greedy, as in SGLang
_M32 = 0xFFFFFFFF
_NO_TOP_K = 1 << 62
_LOGPROB_CHUNK_ELEMENTS = 1 << 26  # rows of [N, V] processed at once by token_logprobs


@dataclass(frozen=True, eq=False)
class SamplingBatch:
    """The sampling parameters of a batch's requests, as per-row device tensors and host-side flags.

    Build it with `SamplingBatch.build` whenever the batch's composition (which requests, in which order)
    changes, and reuse it for every step while it does not. Row-parameter tensors cover only the rows that need
    them: ``temperature``, ``top_p``, ``top_k``, ``log_min_p`` and ``seed_keys`` the sampled (non-greedy) rows,
    in the order of ``sampled_rows``; the penalty tensors every row."""

    size: int
    device: torch.device
    generator: torch.Generator | None
    # which rows are greedy / sampled (host lists, and device index tensors when the batch mixes both)
    greedy_rows: tuple[int, ...]
    sampled_rows: tuple[int, ...]
    greedy_index: torch.Tensor | None
    sampled_index: torch.Tensor | None
    # per sampled row
    temperature: torch.Tensor | None  # [S] float32, None when every sampled row has temperature 1
    top_k: torch.Tensor  # [S] int64; no top-k: a huge number
    top_p: torch.Tensor  # [S] float32
    truncates: torch.Tensor  # [S] bool: the row has a top-k or a top-p
    log_min_p: torch.Tensor  # [S] float32: log(min_p), -inf without min-p
    top_k_prefix: int | None  # when every truncating row has a top-k: the largest, so a topk suffices for all
    seeded_local: torch.Tensor | None  # positions among sampled rows of seeded / unseeded rows
    unseeded_local: torch.Tensor | None
    seeded_global: tuple[int, ...]  # batch rows of the seeded sampled rows, in seed_keys order
    seed_keys: torch.Tensor | None  # [n_seeded] int64, key(seed) of the hash above
    # per row
    frequency_penalty: torch.Tensor | None  # [B] float32, None when no row has one
    presence_penalty: torch.Tensor | None
    repetition_penalty: torch.Tensor | None
    repetition_rows: tuple[int, ...]  # rows with a repetition penalty (their prompts count as seen)
    min_tokens: tuple[tuple[int, int, tuple[int, ...], bool], ...]  # (row, min_new_tokens, stop ids, ban EOS)

    has_top_k: bool  # some sampled row has a top-k
    has_top_p: bool  # some sampled row has top_p < 1
    has_min_p: bool  # some sampled row has min_p > 0
    all_truncate: bool  # every sampled row has a top-k or a top-p (so draws need only a prefix of the sort)

    @property
    def all_greedy(self) -> bool:
        return not self.sampled_rows

    @property
    def has_penalties(self) -> bool:
        return any(p is not None for p in (self.frequency_penalty, self.presence_penalty, self.repetition_penalty))

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        device: torch.device | str = "cpu",
        *,
        generator: torch.Generator | None = None,
    ) -> "SamplingBatch":
        """Per-row tensors for ``params`` (row i samples request i) on ``device``. ``generator``: the source of
        randomness of unseeded rows (default: torch's own for that device); keep one for the server's lifetime."""
        device = torch.device(device)
        if not params:
            raise ValueError("a sampling batch needs at least one row")
        greedy = [i for i, p in enumerate(params) if p.temperature < GREEDY_TEMPERATURE or p.top_k == 1]
        sampled = [i for i, p in enumerate(params) if not (p.temperature < GREEDY_TEMPERATURE or p.top_k == 1)]
        mixed = bool(greedy) and bool(sampled)

        def tensor(values, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        def index(rows) -> torch.Tensor | None:
            return tensor(rows, torch.int64) if mixed else None

        sp = [params[i] for i in sampled]
        top_k = [p.top_k if p.top_k > 0 else _NO_TOP_K for p in sp]
        has_top_p = any(p.top_p < 1 for p in sp)
        truncating = [p.top_k > 0 or p.top_p < 1 for p in sp]
        top_k_prefix = None
        if any(truncating) and all(p.top_k > 0 for p, t in zip(sp, truncating) if t):
            top_k_prefix = max(k for k, t in zip(top_k, truncating) if t)
        seeded = [j for j, p in enumerate(sp) if p.seed is not None]
        unseeded = [j for j, p in enumerate(sp) if p.seed is None]
        partly_seeded = bool(seeded) and bool(unseeded)

        def per_row(name: str, neutral: float) -> torch.Tensor | None:
            values = [getattr(p, name) for p in params]
            return tensor(values) if any(v != neutral for v in values) else None

        min_tokens = tuple(
            (i, p.min_new_tokens, tuple(p.stop_token_ids), not p.ignore_eos)
            for i, p in enumerate(params)
            if p.min_new_tokens > 0
        )
        return cls(
            size=len(params),
            device=device,
            generator=generator,
            greedy_rows=tuple(greedy),
            sampled_rows=tuple(sampled),
            greedy_index=index(greedy),
            sampled_index=index(sampled),
            temperature=tensor([p.temperature for p in sp]) if any(p.temperature != 1 for p in sp) else None,
            top_k=tensor(top_k, torch.int64),
            top_p=tensor([p.top_p for p in sp]),
            truncates=tensor(truncating, torch.bool),
            log_min_p=tensor([math.log(p.min_p) if p.min_p > 0 else -math.inf for p in sp]),
            top_k_prefix=top_k_prefix,
            seeded_local=tensor(seeded, torch.int64) if partly_seeded else None,
            unseeded_local=tensor(unseeded, torch.int64) if partly_seeded else None,
            seeded_global=tuple(sampled[j] for j in seeded),
            seed_keys=_seed_keys(tensor([_as_int64(sp[j].seed) for j in seeded], torch.int64)) if seeded else None,
            frequency_penalty=per_row("frequency_penalty", 0.0),
            presence_penalty=per_row("presence_penalty", 0.0),
            repetition_penalty=per_row("repetition_penalty", 1.0),
            repetition_rows=tuple(i for i, p in enumerate(params) if p.repetition_penalty != 1.0),
            min_tokens=min_tokens,
            has_top_k=any(p.top_k > 0 for p in sp),
            has_top_p=has_top_p,
            has_min_p=any(p.min_p > 0 for p in sp),
            all_truncate=bool(sp) and all(truncating),
        )


def sample(
    logits: torch.Tensor,
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]] | torch.Tensor,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    eos_token_ids: Iterable[int] = (),
    steps: Sequence[int] | None = None,
) -> torch.Tensor:
    """The next token of every row: an int64 tensor ``[B]`` on the logits' device. ``logits`` is not modified.

    ``logits``: ``[B, V]`` (float32, or anything ``.float()`` converts), row i for ``batch`` row i.
    ``output_ids``: each row's generated ids so far (list of lists), or, for callers that keep them up to date,
    their counts as a ``[B, V]`` tensor. Only read when a row has a frequency, presence or repetition penalty.
    ``prompt_ids``: each row's prompt; only read (and then required) when a row has a repetition penalty.
    ``eos_token_ids``: the ids that end generation, kept out (with each row's ``stop_token_ids``) until the row
    has ``min_new_tokens`` tokens. ``steps``: each row's number of generated tokens so far (seeds and
    ``min_new_tokens`` depend on it); by default ``len(output_ids[i])``, required with a count tensor."""
    if logits.dim() != 2 or logits.shape[0] != batch.size:
        raise ValueError(f"logits must be [{batch.size}, vocab], got {list(logits.shape)}")
    if len(output_ids) != batch.size:
        raise ValueError(f"need the output ids of {batch.size} rows, got {len(output_ids)}")
    if steps is None:
        if isinstance(output_ids, torch.Tensor):
            raise ValueError("steps are required when output_ids is a count tensor")
        steps = [len(ids) for ids in output_ids]
    vocab = logits.shape[1]
    x = logits.float()
    if batch.has_penalties:
        if batch.repetition_rows and (prompt_ids is None or len(prompt_ids) != batch.size):
            raise ValueError("a repetition penalty needs every row's prompt_ids")
        x = _apply_penalties(x, batch, output_ids, prompt_ids)
    banned = []
    if batch.min_tokens:
        eos = sorted(set(eos_token_ids))
        for row, minimum, stop_ids, ban_eos in batch.min_tokens:
            if steps[row] < minimum:
                banned += [row * vocab + t for t in {*stop_ids, *(eos if ban_eos else ())} if 0 <= t < vocab]
    if banned:
        x = x.clone(memory_format=torch.contiguous_format) if x is logits else x.contiguous()
        x.view(-1).index_fill_(0, torch.tensor(banned, device=x.device), -math.inf)
    if batch.all_greedy:
        return x.argmax(dim=-1)

    xs = x if batch.sampled_index is None else x.index_select(0, batch.sampled_index)
    if batch.temperature is not None:
        xs = xs / batch.temperature[:, None]
    drawn = _draw(xs, batch, steps)
    if batch.greedy_index is None:
        return drawn
    out = torch.empty(batch.size, dtype=torch.int64, device=x.device)
    out.index_copy_(0, batch.greedy_index, x.index_select(0, batch.greedy_index).argmax(dim=-1))
    out.index_copy_(0, batch.sampled_index, drawn)
    return out


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int], top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities under the model's own distribution, ``log_softmax(logits)`` of the raw logits (before
    penalties, temperature or truncation, as OpenAI reports them).

    ``logits [N, V]``, ``token_ids [N]``: returns ``logprob [N]`` of each token, and the ``top_k`` most likely
    alternatives per row as ``top_logprob [N, k]`` (descending) and ``top_ids [N, k]`` (``k = min(top_k, V)``,
    0 gives empty ``[N, 0]`` tensors). Rows are processed in chunks to bound the temporary memory."""
    n, vocab = logits.shape
    ids = torch.as_tensor(token_ids, dtype=torch.int64, device=logits.device).reshape(-1)
    if ids.shape[0] != n:
        raise ValueError(f"need one token id per logits row ({n}), got {ids.shape[0]}")
    k = max(0, min(top_k, vocab))
    chosen = torch.empty(n, dtype=torch.float32, device=logits.device)
    top_values = torch.empty(n, k, dtype=torch.float32, device=logits.device)
    top_ids = torch.empty(n, k, dtype=torch.int64, device=logits.device)
    step = max(1, _LOGPROB_CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        x = logits[rows].float()
        norm = torch.logsumexp(x, dim=-1, keepdim=True)
        chosen[rows] = (x.gather(1, ids[rows, None]) - norm).squeeze(1)
        if k:
            values, top_ids[rows] = x.topk(k, dim=-1)
            top_values[rows] = values - norm
    return chosen, top_values, top_ids


def listed_logprobs(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """``[N, K]``: the log-probabilities (as `token_logprobs` defines them) of the same ``K`` listed tokens under
    every row of ``logits [N, V]``."""
    ids = torch.as_tensor(token_ids, dtype=torch.int64, device=logits.device)
    out = torch.empty(logits.shape[0], ids.shape[0], dtype=torch.float32, device=logits.device)
    step = max(1, _LOGPROB_CHUNK_ELEMENTS // max(logits.shape[1], 1))
    for start in range(0, logits.shape[0], step):
        x = logits[start : start + step].float()
        out[start : start + step] = x[:, ids] - torch.logsumexp(x, dim=-1, keepdim=True)
    return out


def _apply_penalties(
    x: torch.Tensor,
    batch: SamplingBatch,
    output_ids: Sequence[Sequence[int]] | torch.Tensor,
    prompt_ids: Sequence[Sequence[int]] | None,
) -> torch.Tensor:
    rows, vocab = x.shape
    if isinstance(output_ids, torch.Tensor):
        counts = output_ids.to(device=x.device, dtype=torch.float32)
    else:
        flat = [t for ids in output_ids for t in ids]
        counts = torch.zeros(rows * vocab, dtype=torch.float32, device=x.device)
        if flat:
            row_of = torch.repeat_interleave(
                torch.arange(rows, device=x.device), torch.tensor([len(ids) for ids in output_ids], device=x.device)
            )
            index = row_of * vocab + torch.tensor(flat, dtype=torch.int64, device=x.device)
            counts.scatter_add_(0, index, torch.ones(len(flat), device=x.device))
        counts = counts.view(rows, vocab)
    seen = counts > 0
    if batch.frequency_penalty is not None:
        x = x - batch.frequency_penalty[:, None] * counts
    if batch.presence_penalty is not None:
        x = x - batch.presence_penalty[:, None] * seen
    if batch.repetition_penalty is not None:
        prompt_seen = [i * vocab + t for i in batch.repetition_rows for t in prompt_ids[i]]
        if prompt_seen:
            seen.view(-1).index_fill_(0, torch.tensor(prompt_seen, dtype=torch.int64, device=x.device), True)
        r = batch.repetition_penalty[:, None]
        x = torch.where(seen, torch.where(x > 0, x / r, x * r), x)
    return x


def _draw(xs: torch.Tensor, batch: SamplingBatch, steps: Sequence[int]) -> torch.Tensor:
    """Tokens drawn for the sampled rows (``xs``: their tempered logits)."""
    vocab = xs.shape[1]
    cut, values, order = None, None, None
    if batch.top_k_prefix is not None or batch.has_top_p:  # some row truncates: sort (or top-k) once
        prefix = vocab if batch.top_k_prefix is None else min(batch.top_k_prefix, vocab)
        values, order = xs.sort(dim=-1, descending=True) if prefix >= vocab else xs.topk(prefix, dim=-1)
        k = batch.top_k.clamp(max=prefix)
        if batch.has_top_p:
            in_k = torch.arange(prefix, device=xs.device)[None, :] < k[:, None]
            probs = values.masked_fill(~in_k, -math.inf).softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs
            keep = in_k & ((mass_before < batch.top_p[:, None]) | (batch.top_p[:, None] >= 1))
            k = keep.sum(dim=-1).clamp(min=1)
        cut = values.gather(1, (k - 1)[:, None]).masked_fill(~batch.truncates[:, None], -math.inf)
    if batch.has_min_p:
        top = values[:, :1] if values is not None else xs.max(dim=-1, keepdim=True).values
        min_p_cut = top + batch.log_min_p[:, None]
        cut = min_p_cut if cut is None else torch.maximum(cut, min_p_cut)

    if batch.all_truncate:
        # Every row keeps a prefix of its sorted tokens (those >= its cut, ties included): draw among the
        # longest prefix only, not the whole vocabulary. Noise is per token id, so this draws what the
        # full-vocabulary path below would.
        source = values if values.shape[1] == vocab else xs
        kept = (source >= cut).sum(dim=-1)
        longest = int(kept.max())
        if longest <= values.shape[1]:
            ids = order[:, :longest]
            ranks = torch.arange(longest, device=xs.device)[None, :]
            candidates = values[:, :longest].masked_fill(ranks >= kept[:, None], -math.inf)
            pick = (candidates - torch.log(-torch.log(_uniform_noise(batch, steps, ids, vocab)))).argmax(dim=-1)
            return ids.gather(1, pick[:, None]).squeeze(1)
        # ties at the top-k boundary reach past the top-k prefix: fall through to the full vocabulary
    if cut is not None:
        xs = xs.masked_fill(xs < cut, -math.inf)
    return (xs - torch.log(-torch.log(_uniform_noise(batch, steps, None, vocab)))).argmax(dim=-1)


def _uniform_noise(
    batch: SamplingBatch, steps: Sequence[int], ids: torch.Tensor | None, vocab: int
) -> torch.Tensor:
    """Uniforms in (0, 1) for token ``ids [S, m]`` of the sampled rows (``None``: every token of ``vocab``):
    hashed for seeded rows, drawn from the generator for the others."""
    device = batch.top_p.device
    rows, width = batch.top_p.shape[0], vocab if ids is None else ids.shape[1]
    if batch.seed_keys is None:
        return torch.rand(rows, width, generator=batch.generator, device=device).clamp_(min=2.0**-30)
    row_steps = torch.tensor([steps[r] for r in batch.seeded_global], dtype=torch.int64, device=device)
    if ids is None:
        seeded_ids = _vocab_ids(vocab, device)[None, :]
    else:
        seeded_ids = ids if batch.seeded_local is None else ids.index_select(0, batch.seeded_local)
    seeded = _seeded_uniform(batch.seed_keys, row_steps, seeded_ids)
    if batch.unseeded_local is None:
        return seeded
    noise = torch.empty(rows, width, device=device)
    noise.index_copy_(0, batch.seeded_local, seeded)
    drawn = torch.rand(batch.unseeded_local.shape[0], width, generator=batch.generator, device=device)
    noise.index_copy_(0, batch.unseeded_local, drawn.clamp_(min=2.0**-30))
    return noise


def _mix32(h):
    """A bijection of 32-bit values with good avalanche (two xorshift-multiply rounds). Both multipliers are
    below 2**31, so on 32-bit inputs no product reaches 2**63: exact in int64 on every device."""
    h = h ^ (h >> 16)
    h = (h * 0x21F0AAAD) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x735A2D97) & _M32
    return h ^ (h >> 15)


def _as_int64(seed: int) -> int:
    """``seed mod 2**64`` as the int64 with the same bits."""
    seed %= 2**64
    return seed - 2**64 if seed >= 2**63 else seed


def _seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """key(seed) for seeds given as the int64 with the bits of ``seed mod 2**64``."""
    low = seeds & _M32
    high = (seeds >> 32) & _M32  # arithmetic shift, then masked: the high 32 bits either way
    return _mix32(low ^ _mix32(high ^ 0x9E3779B9))


@lru_cache(maxsize=8)
def _vocab_ids(vocab: int, device: torch.device) -> torch.Tensor:
    return torch.arange(vocab, dtype=torch.int64, device=device)


def _seeded_uniform(keys: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1) from (key, step, token id): ``keys``/``steps`` ``[n]``, ``token_ids`` ``[n, m]`` (or
    ``[1, m]``, shared by all rows); see the module docstring."""
    row = _mix32(keys ^ _mix32((steps + 0x632BE5AB) & _M32))
    h = ((token_ids & _M32) * 0x61C88647) & _M32
    h = h ^ row[:, None]
    h ^= h >> 16
    h.mul_(0x21F0AAAD).bitwise_and_(_M32)
    h ^= h >> 15
    h.mul_(0x735A2D97).bitwise_and_(_M32)
    h ^= h >> 15
    return (h >> 9).to(torch.float32).add_(0.5).mul_(2.0**-23)
