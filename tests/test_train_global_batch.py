"""The arithmetic of a global batch shared by processes, checked in one process with a simulated partner:
the shares' gradients average to the one-process gradient, a non-finite loss anywhere stops everyone,
unreadable images are counted over all processes, and SyncBatchNorm keeps timm's fused activations."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from cxr.errors import TrainError  # noqa: E402
from cxr.train.backbones import create_backbone  # noqa: E402
from cxr.train.distributed import DeviceSetup, DistContext, convert_sync_batchnorm  # noqa: E402
from cxr.train.loop import PhaseState, train_step  # noqa: E402

CPU = DeviceSetup(device=torch.device("cpu"), amp_dtype=None, channels_last=False, pin_memory=False)


def partner(other: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """all_reduce(SUM) as seen by one of 2 processes whose partner contributes ``other``."""
    return lambda local: local + other


def state_for(
    model: nn.Module, weights: torch.Tensor | None, reduce: Callable[..., torch.Tensor]
) -> PhaseState:
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights, keeps the grads
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return PhaseState(model, weights, opt, sched, CPU, world_size=2, all_reduce=reduce)


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("split", [4, 5])  # equal shares, and the unequal shares of a last batch
def test_two_shares_give_the_gradient_of_the_whole_batch(weighted: bool, split: int) -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = torch.randn(9, 6, generator=g), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 3])
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0]) if weighted else None
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y, weight=weights).backward()
    shares = [(x[:split], y[:split]), (x[split:], y[split:])]
    totals = [
        torch.tensor(
            [float(weights[ys].sum()) if weights is not None else float(len(ys)), len(ys), 0, 0],
            dtype=torch.float64,
        )
        for _, ys in shares
    ]
    grads = []
    for rank, (xs, ys) in enumerate(shares):
        mine = copy.deepcopy(model)
        result = train_step(state_for(mine, weights, partner(totals[1 - rank])), xs, ys)
        assert result is not None and result.global_images == 9 and result.images == len(ys)
        grads.append([p.grad.clone() for p in mine.parameters()])
    for averaged, want in zip(zip(*grads, strict=True), ref.parameters(), strict=True):
        torch.testing.assert_close((averaged[0] + averaged[1]) / 2, want.grad)  # what DDP's average gives


def test_a_step_where_the_partner_has_no_image_is_skipped() -> None:
    model = nn.Linear(6, 4)
    empty = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    state = state_for(model, None, partner(empty))
    assert train_step(state, torch.randn(3, 6), torch.tensor([0, 1, 2])) is None
    assert state.step == 0 and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("who", ["this process", "the partner"])
def test_a_non_finite_loss_in_any_process_stops_every_process(who: str) -> None:
    flag = 1.0 if who == "the partner" else 0.0
    state = state_for(
        nn.Linear(6, 4), None, partner(torch.tensor([3.0, 3.0, 0.0, flag], dtype=torch.float64))
    )
    if who == "this process":
        state.nonfinite = (float("nan"), 7)
    with pytest.raises(TrainError, match="training loss became nan") as info:
        train_step(state, torch.randn(3, 6), torch.tensor([0, 1, 2]))
    assert info.value.hint is not None and "learning rate" in info.value.hint


def test_a_non_finite_share_is_reported_to_all_at_the_next_step() -> None:
    model = nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    zeros = torch.tensor([3.0, 3.0, 0.0, 0.0], dtype=torch.float64)
    state = state_for(model, None, partner(zeros))
    r = train_step(state, torch.randn(3, 6), torch.tensor([0, 1, 2]))  # no raise yet: the others
    assert r is not None and state.nonfinite is not None  # would wait for this process in the next step
    with pytest.raises(TrainError, match=f"at step {state.step}"):
        train_step(state, torch.randn(3, 6), torch.tensor([0, 1, 2]))


def test_unreadable_images_are_checked_over_all_processes() -> None:
    from cxr.train.dataset import BadImages

    class Split:
        split = "train"
        rows = [SimpleNamespace(path=f"img{i}.png") for i in range(10)]

        def __len__(self) -> int:
            return 10

    bad = BadImages(Split(), 0.1, defer_check=True)  # type: ignore[arg-type]
    bad.add([(1, "truncated"), (2, "truncated")])  # 20% of the split, but only this process's view
    with pytest.raises(TrainError, match="3 of 10 images of the train split"):
        bad.merge({"img7.png": "not an image"})  # every process merges the same union and stops together
    eager = BadImages(Split(), 0.1)
    with pytest.raises(TrainError, match="2 of 10"):
        eager.add([(1, "truncated"), (2, "truncated")])  # one process checks at once


@pytest.mark.parametrize("name", ["test_efficientnet", "test_byobnet"])
def test_sync_batchnorm_keeps_timms_fused_activations(name: str) -> None:
    """timm's BatchNormAct2d (DenseNet, ResNetV2) carries its activation; torch's converter drops it."""
    model = create_backbone(name, 4, seed=0).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        ddp, gpu = (
            DistContext(world_size=2),
            torch.device("cuda"),
        )  # converted under DDP on GPUs (none needed)
        converted = convert_sync_batchnorm(ddp, copy.deepcopy(model), gpu, True).eval()
        assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
        torch.testing.assert_close(converted(x), want)
        plain = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
        assert not torch.allclose(plain(x), want)  # the pitfall this guards against
