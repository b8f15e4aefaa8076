"""Cross-validation folds of the split: which run of a class's shuffled order is the test split of fold i.

Takes: a class's image count, the number of folds K and the fold. Makes: the test block ``[lo, hi)`` of
positions in that class's shuffled order (``cxr.data.manifest``). The last fold's block is the last
``floor(n / K)`` positions, which is exactly where the plain split puts test (``--test 1/K``), so fold K-1 IS
the plain split with the same seed; the other K-1 folds share the remaining positions in blocks of equal
size (+-1), so across the K folds every image is tested exactly once. A class with fewer than K images never
goes to test (the plain split's rule: a rare class fills train first, then val).
"""

from __future__ import annotations

from cxr.errors import DataError


def check_folds(folds: int, fold: int, test_fraction: float) -> None:
    """Refuse a fold setting that cannot be cut (``folds`` 0 means no cross-validation)."""
    if folds == 0:
        if fold != 0:
            raise DataError(f"fold {fold} was given without folds", hint="pass --folds K with --fold I")
        return
    if folds < 2:
        raise DataError(
            f"folds must be 2 or more (or 0 for no folds), got {folds}", hint="for example --folds 5"
        )
    if not 0 <= fold < folds:
        raise DataError(f"fold {fold} is not one of 0..{folds - 1}", hint=f"pass --fold 0 to {folds - 1}")
    if abs(test_fraction - 1.0 / folds) > 1e-6:
        raise DataError(
            f"with {folds} folds the test fraction is 1/{folds}, not {test_fraction}",
            hint="leave --test out when you pass --folds",
        )


def held_out_block(n: int, n_test: int, folds: int, fold: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of the class's shuffled order that are fold ``fold``'s test split.

    ``n_test`` is the plain split's test size for the class (``floor(n / folds)``): the last fold takes the
    last ``n_test`` positions, the others cut ``[0, n - n_test)`` evenly. ``n_test`` 0: an empty block."""
    if n_test == 0:
        return n, n
    if fold == folds - 1:
        return n - n_test, n
    rest = n - n_test
    return fold * rest // (folds - 1), (fold + 1) * rest // (folds - 1)
