"""A pseudo-random permutation of range(n) evaluated one index at a time, in O(1) time and memory.

The data loader shuffles the windows of each source once per epoch. Materialising that order
(`rng.permutation(n)`) costs 8 bytes per window on every rank and a pass over all of them before the
first sample of each epoch: 4 GB and seconds for a source of 2^29 windows (1T tokens at 2048). Instead,
`Permutation(n, key)(i)` computes the i-th element directly: a balanced Feistel network (Luby & Rackoff
1988) on the smallest domain of 2h bits that holds n, with round functions keyed from `key`, is a
bijection of that domain; applying it again until the value falls below n ("cycle walking", Black &
Rogaway 2002) restricts it to a bijection of range(n). The domain is below 4n, so fewer than 4 rounds of
walking are needed on average.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 6
_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Permutation:
    """`Permutation(n, key)(i)` for i in range(n): a permutation of range(n) fixed by `key` (ints, e.g.
    (seed, source, epoch))."""

    def __init__(self, n: int, key: tuple[int, ...]):
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.low = (1 << self.half) - 1
        seeds = np.random.SeedSequence([int(k) for k in key]).generate_state(ROUNDS, dtype=np.uint64)
        self.round_keys = [int(s) for s in seeds]

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half, x & self.low
        for key in self.round_keys:
            left, right = right, left ^ (_mix(right ^ key) & self.low)
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} is outside range({self.n})")
        x = self._feistel(i)
        while x >= self.n:
            x = self._feistel(x)
        return x
