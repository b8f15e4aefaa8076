"""Class weights for the weighted cross-entropy: w_k = N / (K * n_k) over the train split."""

from __future__ import annotations

from collections.abc import Mapping

from cxr.errors import DataError


def class_weights(
    counts: Mapping[str, int], classes: tuple[str, ...], cap: float | None = None
) -> tuple[float, ...]:
    """Weights in ``classes`` order; a class with no training image is an error that names it.

    ``cap``: no weight above it (a class of one image in 361 would otherwise weigh 90 times the rest).
    """
    missing = [c for c in classes if counts.get(c, 0) <= 0]
    if missing:
        raise DataError(
            f"the train split has no image of class(es) {', '.join(repr(c) for c in missing)}; "
            "the weighted loss and the classifier need every class in training",
            hint="add images of that class, or re-split with another seed",
        )
    n = sum(counts[c] for c in classes)
    k = len(classes)
    return tuple(min(n / (k * counts[c]), cap if cap is not None else float("inf")) for c in classes)
