"""Exact regexes for bounded integers and decimals, as JSON writes them.

Integers are ``-?(0|[1-9][0-9]*)``; ``integer_range_regex(lo, hi)`` matches exactly the canonical spellings of
the integers in ``[lo, hi]`` (either bound may be None), never ``-0``.

Decimals are ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?`` (no exponent: bounds and exponents do not mix in a regex);
``decimal_range_regex`` matches exactly those spellings whose value lies within the bounds, each inclusive or
exclusive. The construction compares digit strings: a value's integer part against the bounds' integer parts
(`integer_range_regex`), and on the boundary integer its fraction digits against the bound's fraction digits
(a fraction ``d`` stands for the value ``0.d``; trailing zeros do not change it).
"""

from __future__ import annotations

from decimal import Decimal

_ANY_FRACTION = r"(\.[0-9]+)?"


def _alt(parts: list[str]) -> str:
    parts = list(dict.fromkeys(p for p in parts if p is not None))
    if not parts:
        return None  # type: ignore[return-value]
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def _digit(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else ("[0-9]" if (lo, hi) == (0, 9) else f"[{lo}-{hi}]")


def _same_length(lo: str, hi: str) -> str:
    """Digit strings of len(lo) == len(hi) between lo and hi (inclusive, lexicographic = numeric)."""
    n = len(lo)
    if lo == hi:
        return lo
    if lo == "0" * n and hi == "9" * n:
        return "[0-9]" if n == 1 else f"[0-9]{{{n}}}"
    if n == 1:
        return _digit(int(lo), int(hi))
    if lo[0] == hi[0]:
        return lo[0] + _same_length(lo[1:], hi[1:])
    a, b = int(lo[0]), int(hi[0])
    parts = [lo[0] + _same_length(lo[1:], "9" * (n - 1))]
    if b - a > 1:
        rest = "[0-9]" if n == 2 else f"[0-9]{{{n - 1}}}"
        parts.append(_digit(a + 1, b - 1) + rest)
    parts.append(hi[0] + _same_length("0" * (n - 1), hi[1:]))
    return _alt(parts)


def _natural_range(lo: int, hi: int | None) -> str | None:
    """Canonical spellings of the integers in [lo, hi], 0 <= lo; hi None is unbounded."""
    if hi is not None and hi < lo:
        return None
    parts = []
    length = len(str(lo))
    last = len(str(hi)) if hi is not None else length
    for n in range(length, last + 1):
        low = lo if n == length else 10 ** (n - 1)
        high = (10**n - 1) if hi is None or n < last else hi
        parts.append(_same_length(str(low), str(high)))
    if hi is None:
        parts.append(f"[1-9][0-9]{{{length},}}")  # every longer number
    return _alt(parts)


def integer_range_regex(lo: int | None, hi: int | None) -> str:
    """Integers in [lo, hi] (None: unbounded), canonical JSON spelling. Raises ValueError when empty."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"no integer lies in [{lo}, {hi}]")
    parts = []
    if lo is None or lo < 0:  # negative part: -m for m in [max(1, -hi), -lo]
        m_lo = max(1, -hi) if hi is not None else 1
        m_hi = -lo if lo is not None else None
        neg = _natural_range(m_lo, m_hi)
        if neg is not None:
            parts.append("-" + neg)
    if hi is None or hi >= 0:
        pos = _natural_range(max(0, lo) if lo is not None else 0, hi)
        if pos is not None:
            parts.append(pos)
    result = _alt(parts)
    if result is None:
        raise ValueError(f"no integer lies in [{lo}, {hi}]")
    return result


# ---- decimals -----------------------------------------------------------------------------------------------


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal as (integer part, fraction digits without trailing zeros)."""
    text = format(value, "f")
    whole, _, fraction = text.partition(".")
    return int(whole), fraction.rstrip("0")


def _fraction_at_least(f: str, strict: bool) -> str | None:
    """Regex for the text after the integer part (``""`` or ``\\.digits``) whose value 0.d is >= 0.f (> if
    strict). f has no trailing zeros ("" is zero)."""
    if not f:
        return r"\.0*[1-9][0-9]*" if strict else _ANY_FRACTION
    parts = []
    for i, c in enumerate(f):
        if c != "9":
            parts.append(f[:i] + _digit(int(c) + 1, 9) + "[0-9]*")
    parts.append(f + ("0*[1-9][0-9]*" if strict else "[0-9]*"))
    return r"\." + _alt(parts)


def _fraction_at_most(f: str, strict: bool) -> str | None:
    """Text after the integer part whose value 0.d is <= 0.f (< if strict)."""
    if not f:
        return None if strict else r"(\.0+)?"
    parts = []
    for i, c in enumerate(f):
        if c != "0":
            parts.append(f[:i] + _digit(0, int(c) - 1) + "[0-9]*")
    for k in range(1, len(f)):  # proper prefixes (then zeros) are smaller, as f ends in a non-zero digit
        parts.append(f[:k] + "0*")
    if not strict:
        parts.append(f + "0*")
    return "(" + r"\." + _alt(parts) + ")?"  # no fraction at all is 0, always smaller than f > 0


def _fraction_between(a: str, a_strict: bool, b: str, b_strict: bool) -> str | None:
    """Text after the integer part with 0.a <(=) 0.d <(=) 0.b (a, b without trailing zeros)."""
    width = max(len(a), len(b))
    pa, pb = a.ljust(width, "0"), b.ljust(width, "0")
    if pa > pb or (pa == pb and (a_strict or b_strict)):
        return None
    if pa == pb:
        return (r"\." + a + "0*") if a else r"(\.0+)?"
    i = next(k for k in range(width) if pa[k] != pb[k])
    prefix = pa[:i]
    x, y = int(pa[i]), int(pb[i])
    parts = []
    # d = prefix + x + rest, rest >= a[i+1:]
    low_rest = a[i + 1:] if len(a) > i + 1 else ""
    low_tail = _fraction_at_least(low_rest, a_strict)
    if low_tail is not None:
        parts.append(prefix + str(x) + _tail_digits(low_tail))
    if y - x > 1:
        parts.append(prefix + _digit(x + 1, y - 1) + "[0-9]*")
    high_rest = b[i + 1:] if len(b) > i + 1 else ""
    high_tail = _fraction_at_most(high_rest, b_strict)
    if high_tail is not None:
        parts.append(prefix + str(y) + _tail_digits(high_tail))
    # d = a prefix of prefix (zeros after): only when that equals a itself (a shorter than i+1 digits)
    if not a_strict and len(a) <= i:  # value of prefix[:len(a)] + zeros == a, and it is < b
        parts.append(a + "0*" if a else "0+")
    body = _alt([p for p in parts if p])
    if body is None:
        return None
    if not a and not a_strict:  # zero itself (no fraction) is allowed
        return "(" + r"\." + body + ")?"
    return r"\." + body


def _tail_digits(fraction_text: str) -> str:
    """Turn a fraction regex (``\\.X`` or ``(\\.X)?``) into the digits that may follow an already written
    digit: ``X`` or ``(X)?`` (no dot)."""
    if fraction_text.startswith(r"(\."):
        return "(" + fraction_text[3:]
    assert fraction_text.startswith(r"\.")
    return "(" + fraction_text[2:] + ")"


def _nonnegative_decimals(lo: Decimal | None, lo_strict: bool, hi: Decimal | None, hi_strict: bool) -> str | None:
    """Spellings without sign of the values v >= 0 within the bounds (lo >= 0 or None)."""
    if lo is None:
        lo, lo_strict = Decimal(0), False
    li, lf = _split(lo)
    if hi is None:
        parts = [str(li) + _fraction_at_least(lf, lo_strict)]
        rest = _natural_range(li + 1, None)
        if rest is not None:
            parts.append(rest + _ANY_FRACTION)
        return _alt(parts)
    hi_i, hf = _split(hi)
    if li == hi_i:
        frac = _fraction_between(lf, lo_strict, hf, hi_strict)
        return None if frac is None else str(li) + frac
    parts = []
    low_frac = _fraction_at_least(lf, lo_strict)
    if low_frac is not None:
        parts.append(str(li) + low_frac)
    middle = _natural_range(li + 1, hi_i - 1)
    if middle is not None:
        parts.append(middle + _ANY_FRACTION)
    high_frac = _fraction_at_most(hf, hi_strict)
    if high_frac is not None:
        parts.append(str(hi_i) + high_frac)
    return _alt(parts)


def decimal_range_regex(lo: Decimal | int | float | str | None, hi: Decimal | int | float | str | None,
                        lo_strict: bool = False, hi_strict: bool = False) -> str:
    """Decimals (no exponent) whose value lies in the interval; raises ValueError when it is empty."""
    lo_d = None if lo is None else Decimal(str(lo))
    hi_d = None if hi is None else Decimal(str(hi))
    if lo_d is not None and hi_d is not None and (lo_d > hi_d or (lo_d == hi_d and (lo_strict or hi_strict))):
        raise ValueError(f"no number lies between {lo} and {hi}")
    parts = []
    # negative values -y: y in (max(0, -hi), -lo) with the bound kinds swapped, y > 0 (no "-0")
    if lo_d is None or lo_d < 0:
        y_lo, y_lo_strict = (Decimal(0), True) if hi_d is None or hi_d >= 0 else (-hi_d, hi_strict)
        y_hi, y_hi_strict = (None, False) if lo_d is None else (-lo_d, lo_strict)
        if y_lo == 0:
            y_lo_strict = True
        neg = _nonnegative_decimals(y_lo, y_lo_strict, y_hi, y_hi_strict)
        if neg is not None:
            parts.append("-" + neg)
    if hi_d is None or hi_d > 0 or (hi_d == 0 and not hi_strict):
        if lo_d is None or lo_d < 0:
            p_lo, p_lo_strict = Decimal(0), False
        else:
            p_lo, p_lo_strict = lo_d, lo_strict
        pos = _nonnegative_decimals(p_lo, p_lo_strict, hi_d, hi_strict)
        if pos is not None:
            parts.append(pos)
    result = _alt(parts)
    if result is None:
        raise ValueError(f"no number lies between {lo} and {hi}")
    return result
