"""Class-weighted loss, the cosine schedule's warm restarts, early stopping and validation metrics."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest

torch = pytest.importorskip("torch")

from cxr.data.weights import class_weights  # noqa: E402
from cxr.errors import DataError  # noqa: E402
from cxr.train.config import ScheduleConfig, TrainSettings  # noqa: E402
from cxr.train.loop import EarlyStopping, make_optimizer, make_scheduler, weighted_ce  # noqa: E402

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


@pytest.mark.parametrize(
    "counts",
    [
        {"COVID": 10, "Lung_Opacity": 10, "Normal": 10, "Viral Pneumonia": 10},
        dict(zip(CLASSES, (3616, 6012, 10192, 1345), strict=True)),
    ],
)
def test_class_weights_are_n_over_k_nk(counts: dict[str, int]) -> None:
    w = class_weights(counts, CLASSES)
    n = sum(counts.values())
    assert w == pytest.approx([n / (4 * counts[c]) for c in CLASSES])
    assert sum(w[i] * counts[c] for i, c in enumerate(CLASSES)) == pytest.approx(n)  # each class weighs N/K


def test_a_class_missing_from_train_is_named() -> None:
    with pytest.raises(DataError, match="Viral Pneumonia"):
        class_weights({"COVID": 3, "Lung_Opacity": 3, "Normal": 3}, CLASSES)


def test_weighted_loss_is_the_weighted_mean_of_per_image_losses() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 0, 0, 2, 3, 1])
    w = torch.tensor([0.5, 2.0, 1.0, 4.0])
    per_image = -torch.log_softmax(logits, dim=1)[torch.arange(6), y]
    expected = (w[y] * per_image).sum() / w[y].sum()
    assert float(weighted_ce(logits, y, w)) == pytest.approx(float(expected), rel=1e-6)
    assert float(weighted_ce(logits, y, None)) == pytest.approx(float(per_image.mean()), rel=1e-6)


@pytest.mark.parametrize("t0_epochs, t_mult, iters", [(1.0, 2, 5), (2.0, 1, 3), (0.5, 2, 8)])
def test_cosine_schedule_restarts_per_iteration(t0_epochs: float, t_mult: int, iters: int) -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    settings = TrainSettings(scheduler=ScheduleConfig(t0_epochs=t0_epochs, t_mult=t_mult, min_lr_ratio=0.1))
    opt = make_optimizer(params, settings, lr=1e-2)
    sched = make_scheduler(opt, settings.scheduler, iters)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(60):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    t0 = max(1, round(t0_epochs * iters))
    restarts, length, at = [], t0, t0
    while at <= 60:
        restarts.append(at)
        length *= t_mult
        at += length
    jumps = [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1] + 1e-12]
    assert jumps == restarts
    assert all(lrs[i] == pytest.approx(1e-2) for i in [0, *restarts])
    assert min(lrs) >= 1e-3 - 1e-12
    first = lrs[: restarts[0]]
    assert all(a > b for a, b in zip(first, first[1:], strict=False))  # cosine decay inside a cycle
    half = t0 // 2
    if t0 % 2 == 0 and t0 > 1:
        assert lrs[half] == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * half / t0)))


@pytest.mark.parametrize(
    "optimizer, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_optimizer_is_chosen_by_config(optimizer: str, cls: type) -> None:
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], TrainSettings(optimizer=optimizer), lr=0.1)  # type: ignore[arg-type]
    assert type(opt) is cls


@pytest.mark.parametrize(
    "mode, values, patience, stop_at, best_epoch",
    [
        ("max", [0.1, 0.3, 0.2, 0.25, 0.29, 0.5], 3, 4, 1),
        ("max", [0.1, 0.2, 0.3, 0.4], 1, None, 3),
        ("max", [0.4, 0.3], 1, 1, 0),
        ("min", [1.0, 0.8, 0.9, 0.7, 0.75], 2, None, 3),
        ("max", [0.5, float("nan"), 0.4], 2, 2, 0),
    ],
)
def test_early_stopping(
    mode: str, values: list[float], patience: int, stop_at: int | None, best_epoch: int
) -> None:
    es = EarlyStopping("m", mode, patience)  # type: ignore[arg-type]
    stopped = None
    for epoch, v in enumerate(values):
        es.update(v, epoch)
        if es.should_stop:
            stopped = epoch
            break
    assert stopped == stop_at
    assert es.best_epoch == best_epoch
    again = EarlyStopping(**asdict(es))
    assert again == es


def test_min_delta_ignores_tiny_improvements() -> None:
    es = EarlyStopping("macro_f1", "max", patience=2, min_delta=0.01)
    assert es.update(0.5, 0) and not es.update(0.505, 1) and not es.update(0.509, 2)
    assert es.should_stop and es.best == 0.5
