"""How batches are cut: N processes together see exactly the global batches one process sees, a single
process keeps the shuffle order it always had, and evaluation splits a split into N ordered parts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from cxr.train.dataset import GlobalBatchSampler, epoch_generator  # noqa: E402
from cxr.train.distributed import DistContext  # noqa: E402


def batches(
    n: int, batch: int, shard: DistContext = DistContext(), *, shuffle: bool = True
) -> list[list[int]]:
    g = epoch_generator(5, 2)
    sampler = GlobalBatchSampler(n, batch, shuffle=shuffle, generator=g, shard=shard)
    loader = DataLoader(list(range(n)), batch_sampler=sampler, generator=g, collate_fn=list)
    out = list(loader)
    assert len(out) == len(loader)
    return out


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 31, 32, 33])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_one_process_keeps_the_torch_random_sampler_order(n: int, batch: int) -> None:
    """Before DDP support the loader was RandomSampler + drop_last of a final batch of one image."""
    g = epoch_generator(5, 2)
    old = DataLoader(
        list(range(n)),
        batch_size=batch,
        sampler=RandomSampler(range(n), generator=g),
        generator=g,
        drop_last=n % batch == 1 and n > 1,
        collate_fn=list,
    )
    assert batches(n, batch) == list(old)


@pytest.mark.parametrize(
    ("n", "batch", "world"), [(40, 8, 2), (37, 8, 2), (36, 8, 4), (50, 12, 3), (64, 16, 4)]
)
def test_processes_share_every_global_batch(n: int, batch: int, world: int) -> None:
    single = batches(n, batch)
    parts = [batches(n, batch, DistContext(r, world)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # same number of steps everywhere (DDP needs it)
    for step, whole in enumerate(single[: len(parts[0])]):
        shares = [p[step] for p in parts]
        assert sum(shares, []) == whole  # contiguous shares, in rank order, make up the global batch
        assert all(len(s) >= 2 for s in shares)  # BatchNorm never sees a single image
    seen = [i for p in parts for b in p for i in b]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("n", "batch", "world", "steps"), [(34, 8, 2, 4), (36, 8, 2, 5), (33, 8, 1, 4), (34, 8, 1, 5)]
)
def test_a_last_batch_too_small_to_share_is_dropped(n: int, batch: int, world: int, steps: int) -> None:
    assert all(len(batches(n, batch, DistContext(r, world))) == steps for r in range(world))


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 3), (2, 4), (17, 2)])
def test_evaluation_parts_cover_the_split_in_order(n: int, world: int) -> None:
    parts = [batches(n, 3, DistContext(r, world), shuffle=False) for r in range(world)]
    assert [i for p in parts for b in p for i in b] == list(range(n))
    assert all(len(b) <= 3 for p in parts for b in p)
