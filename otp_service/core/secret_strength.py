"""How guessable a secret looks, from its own characters: a length check lets `'a' * 32`, `'abcd' * 8` or
`'0123456789abcdef' * 2` through, and production must not run on them.

The estimate (`estimated_bits`) counts log2(distinct symbols) bits for each symbol that is not predictable
from the ones before it: not a repetition of the value's shortest period, and not the continuation of a run
(`aaaa`, `abcd`, `9876`: the step between the two symbols before it, again). Random values score about
4–6 bits a character (hex, base64), repeated or sequential ones next to nothing; so a value under
`BITS_PER_CHARACTER` bits for each character its variable requires is refused. It cannot prove a value random
(a sentence passes): it catches the mechanical ones; the published ones are refused by name (PUBLISHED_SECRETS).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence

from .signing import key_bytes

BITS_PER_CHARACTER = 2  # of the variable's minimum length: 64 bits for a 32-character secret, 32 for a 16-one

# Secrets written down in this repository, its history or its documentation — the demo data's (reports/demo.py),
# the tests', the benchmarks', the notebooks' — which anyone can read: production refuses them by name.
# tests/test_config.py finds every secret the repository writes down and checks that production refuses it.
PUBLISHED_SECRETS = frozenset(
    {
        "demo-master-secret-not-for-production-0123",
        "demo-api-key-not-for-production",
        "ZGVtby1hdWRpdC1zaWduaW5nLWtleS1kZW1vLW9ubHk=",
        "test-master-secret-0123456789abcdefghijklmnop",
        "test-api-key-0123456789abcdef",
        "test-metrics-token-0123456789abcdef",
        "dGVzdC1hdWRpdC1zaWduaW5nLWtleS0zMi1ieXRlcyE=",
        "bmV3LWF1ZGl0LXNpZ25pbmcta2V5LTMyLWJ5dGVzLiE=",
        "another-master-secret-0123456789abcdefgh",
        "rotated-master-secret-0123456789abcdefghij",
        "metrics-token-0123456789",
        "bench-master-secret-0123456789abcdefghijkl",
        "bench-api-key-0123456789abcdef",
        "bench-metrics-token-0123456789abcdef",
        "YmVuY2gtYXVkaXQtc2lnbmluZy1rZXktMzItYnl0ZXM=",
        "notebook-05-master-secret-0123456789abcdef",
        "notebook-05-api-key-0123456789",
        "bm90ZWJvb2stMDUtYXVkaXQtc2lnbmluZy1rZXktMzI=",
        "bm90ZWJvb2stMDUtcm90YXRlZC1zaWduaW5nLWtleSE=",
        "example-master-secret-from-the-environment",
        "12345678901234567890123456789012",  # RFC 6238's test seeds (SHA-256, SHA-512)
        "1234567890123456789012345678901234567890123456789012345678901234",
    }
)


def _symbols(value: str | bytes) -> list[int]:
    return list(value) if isinstance(value, bytes) else [ord(c) for c in value]


def shortest_period(symbols: Sequence[int]) -> int:
    """The least p with symbols[i] == symbols[i + p] for every i (the length when there is none): a value made
    by repeating its first p symbols tells no more than they do. Knuth–Morris–Pratt's border, in linear time."""
    border = [0] * len(symbols)
    k = 0
    for i in range(1, len(symbols)):
        while k and symbols[i] != symbols[k]:
            k = border[k - 1]
        if symbols[i] == symbols[k]:
            k += 1
        border[i] = k
    return len(symbols) - (border[-1] if symbols else 0)


def unpredictable(symbols: Sequence[int]) -> int:
    """How many symbols do not continue the step between the two before them: of `aaaa` (step 0), `abcd` and
    `9876` (±1) only the first two count."""
    steps = [b - a for a, b in zip(symbols, symbols[1:], strict=False)]
    return min(len(symbols), 2) + sum(1 for before, step in zip(steps, steps[1:], strict=False) if step != before)


def estimated_bits(value: str | bytes) -> float:
    """The entropy `value` shows: log2(its distinct symbols) for each unpredictable symbol of its shortest
    period. 0 for a value of one repeated symbol."""
    symbols = _symbols(value)
    distinct = len(set(symbols))
    if distinct < 2:
        return 0.0
    return unpredictable(symbols[: shortest_period(symbols)]) * math.log2(distinct)


def weakness(value: str | bytes, min_length: int) -> str | None:
    """What makes `value` guessable for a variable requiring `min_length` characters (or bytes), or None. The
    answer describes the value, never repeats it (it ends up in a deployment's logs)."""
    symbols = _symbols(value)
    if symbols and len(set(symbols)) == 1:
        return "is one byte repeated (a constant seed)" if isinstance(value, bytes) else "is one character repeated"
    bits, needed = estimated_bits(value), BITS_PER_CHARACTER * min_length
    if bits < needed:
        return (
            f"looks guessable: about {bits:.0f} bits of entropy by estimate (repeated or sequential, or too few "
            f"distinct characters), fewer than {needed}"
        )
    return None


def spellings(secret: str) -> set[str]:
    """`secret` as written, and — when it is 32 bytes in base64 — those bytes in standard padded base64: the
    same seed written URL-safe or unpadded is the same secret."""
    try:
        return {secret, base64.b64encode(key_bytes(secret)).decode("ascii")}
    except ValueError:
        return {secret}
