"""The loader's index-at-a-time permutation: a bijection of range(n) for every n, fixed by its key, different
across keys, and as well shuffled as a random permutation (displacement and neighbour statistics)."""

import numpy as np
import pytest

from plait.train.permutation import Permutation


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 1000, 4097, 65537])
def test_every_n_gives_a_bijection(n):
    values = [Permutation(n, (0, 1, 2))(i) for i in range(n)]
    assert sorted(values) == list(range(n))


def test_the_key_fixes_the_order():
    n = 1000
    order = [Permutation(n, (7, 0, 0))(i) for i in range(n)]
    assert order == [Permutation(n, (7, 0, 0))(i) for i in range(n)]
    for key in [(8, 0, 0), (7, 1, 0), (7, 0, 1)]:
        other = [Permutation(n, key)(i) for i in range(n)]
        assert np.mean(np.array(other) == np.array(order)) < 0.02, key  # ~1/n positions agree by chance


def test_the_order_looks_random():
    n = 20000
    order = np.array([Permutation(n, (0, 0, 0))(i) for i in range(n)])
    # a uniform permutation: mean |perm(i) - i| = (n^2 - 1) / (3n), neighbours uncorrelated, no fixed runs
    assert np.mean(np.abs(order - np.arange(n))) == pytest.approx(n / 3, rel=0.02)
    assert abs(np.corrcoef(order[:-1], order[1:])[0, 1]) < 0.03
    assert abs(np.corrcoef(order, np.arange(n))[0, 1]) < 0.03
    increasing = np.mean(np.diff(order) > 0)
    assert increasing == pytest.approx(0.5, abs=0.02)


def test_indices_outside_the_range_are_refused():
    with pytest.raises(IndexError, match=r"index 10 is outside range\(10\)"):
        Permutation(10, (0,))(10)
    with pytest.raises(ValueError, match="n >= 1"):
        Permutation(0, (0,))
