"""Manifest -> transforms -> Dataset -> DataLoader, unreadable images counted (``BadImages``).

Augmentation draws from torch's RNG forked and seeded per ``(seed, epoch, index)``; under DDP every process
cuts the same permutation into the same global batches and takes its own contiguous share of each.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from cxr.data.manifest import Manifest, ManifestRow, SplitConfig, build_manifest, load_manifest
from cxr.errors import DataError, DecodeError, TrainError
from cxr.imaging.decode import decode_gray
from cxr.spec import PreprocessSpec
from cxr.train.config import DataConfig
from cxr.train.distributed import SINGLE, DistContext

log = logging.getLogger(__name__)

Sample = tuple[torch.Tensor | None, int, int, str]  # (image or None, label index, row index, error)


ROTATION_DEGREES = 10.0
BILINEAR = T.InterpolationMode.BILINEAR


def load_rgb(path: Path | str) -> Image.Image:
    """Decode any supported image the way the runtime does, as a 3-channel PIL image."""
    return Image.fromarray(decode_gray(path), "L").convert("RGB")


def _tail(spec: PreprocessSpec) -> list[object]:
    h, w = spec.input_size
    return [T.Resize((h, w), interpolation=BILINEAR), T.ToTensor(), T.Normalize(spec.mean, spec.std)]


def eval_transform(spec: PreprocessSpec, via: tuple[int, int] | None = None) -> T.Compose:
    """Resize -> ToTensor -> Normalize, equal to the runtime's ``to_model_input(..., normalized=True)``.

    ``via`` (h, w): resize to that size first, as the fused graph's runtime does before the graph resizes
    again for a member of a smaller input size.
    """
    first = (
        [] if via is None or tuple(via) == spec.input_size else [T.Resize(tuple(via), interpolation=BILINEAR)]
    )
    return T.Compose([*first, *_tail(spec)])


def train_transform(spec: PreprocessSpec, degrees: float = ROTATION_DEGREES) -> T.Compose:
    """RandomRotation(degrees) -> Resize -> ToTensor -> Normalize (the study's augmentation)."""
    return T.Compose([T.RandomRotation(degrees, interpolation=T.InterpolationMode.NEAREST), *_tail(spec)])


def resolve_manifest(data: DataConfig, run_dir: Path) -> Manifest:
    """Load ``data.manifest``; or build ``RUN_DIR/manifest.csv`` from ``data.data_dir`` once and reuse it."""
    if data.manifest is not None and Path(data.manifest).is_file():
        return load_manifest(Path(data.manifest))
    if data.data_dir is None:  # DataConfig requires one of the two: the manifest is missing
        raise DataError(
            f"manifest {data.manifest} does not exist",
            hint="create it with `cxr data split DATA_DIR --output MANIFEST`, or set data.data_dir "
            "instead to split a data set folder here",
            path=data.manifest,
        )
    out = Path(data.manifest) if data.manifest is not None else Path(run_dir) / "manifest.csv"
    if out.is_file():
        log.info("reusing manifest %s", out)
        return load_manifest(out)
    log.info("splitting %s into %s (seed %d)", data.data_dir, out, data.split_seed)
    return build_manifest(SplitConfig(data_dir=Path(data.data_dir), out=out, seed=data.split_seed)).manifest


def adopt_manifest(manifest: Manifest, run_dir: Path) -> Manifest:
    """Make ``RUN_DIR/manifest.csv`` (which every later stage reads) the run's manifest, copied with its
    ``.json`` (the data root); a different manifest already there is refused rather than overwritten."""
    target = Path(run_dir) / "manifest.csv"
    if manifest.path is None or Path(manifest.path).resolve() == target.resolve():
        return manifest
    if target.is_file():
        there = load_manifest(target, check_files=False)
        if there.digest() != manifest.digest():
            raise DataError(
                f"{target} holds another split (manifest {there.digest()}) than data.manifest "
                f"{manifest.path} ({manifest.digest()}); the run's later stages read {target}",
                hint="use another run_dir, or delete the run directory's manifest.csv (and its members) first",
                path=target,
            )
        return there
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(manifest.path, target)
    src_meta = Path(manifest.path).with_suffix(".json")
    if src_meta.is_file():
        shutil.copyfile(src_meta, target.with_suffix(".json"))
    else:  # no sidecar: record the root so the copy's relative paths still resolve
        target.with_suffix(".json").write_text(json.dumps({"root": str(manifest.root)}), encoding="utf-8")
    log.info("copied manifest %s to %s", manifest.path, target)
    return load_manifest(target, check_files=False)


def check_manifest(manifest: Manifest) -> None:
    """Every class needs a training image (the weighted loss divides by its count); val must not be empty."""
    missing = manifest.missing_classes()["train"]
    if missing:
        raise DataError(
            f"the train split of {manifest.path or manifest.root} has no image of class(es) "
            f"{', '.join(repr(c) for c in missing)}",
            hint="add images of that class to the data set, or re-split it (`cxr data split`) so that "
            "every class reaches the train split",
            path=manifest.path,
        )
    if not manifest.split("val"):
        raise DataError(
            f"the val split of {manifest.path or manifest.root} is empty: validation drives early stopping",
            hint="re-split with a validation fraction large enough for a few images per class",
            path=manifest.path,
        )


class ManifestDataset(Dataset[Sample]):
    """One split of a manifest as (image, label, index, error) samples; errors never raise here."""

    def __init__(
        self,
        manifest: Manifest,
        split: str,
        transform: Callable[[Any], torch.Tensor],
        *,
        seed: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.split = split
        self.rows: tuple[ManifestRow, ...] = manifest.split(split)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw other (but again repeatable) augmentations in each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        label = self.manifest.classes.index(row.label)
        try:
            img = load_rgb(self.manifest.abspath(row))
        except DecodeError as e:
            return None, label, index, e.message
        if self.seed is None:
            return self.transform(img), label, index, ""
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label, index, ""


@dataclass
class Batch:
    x: torch.Tensor | None
    y: torch.Tensor
    index: torch.Tensor
    bad: list[tuple[int, str]] = field(default_factory=list)


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack the readable samples; report the unreadable ones in ``Batch.bad``."""
    good = [s for s in samples if s[0] is not None]
    bad = [(s[2], s[3]) for s in samples if s[0] is None]
    x = torch.stack([s[0] for s in good if s[0] is not None]) if good else None
    y = torch.tensor([s[1] for s in good], dtype=torch.long)
    idx = torch.tensor([s[2] for s in good], dtype=torch.long)
    return Batch(x, y, idx, bad)


class BadImages:
    """Unreadable images met in one split; raises ``TrainError`` past ``max_fraction`` of the split."""

    def __init__(self, dataset: ManifestDataset, max_fraction: float, *, defer_check: bool = False) -> None:
        self.dataset = dataset  # defer_check: under DDP only ``merge`` (all processes' images) checks
        self.max_fraction = max_fraction
        self.defer_check = defer_check
        self.paths: dict[str, str] = {}

    def add(self, bad: Sequence[tuple[int, str]]) -> None:
        for index, message in bad:
            path = self.dataset.rows[index].path
            if path not in self.paths:
                self.paths[path] = message
                log.warning("skipping unreadable image %s: %s", path, message)
        if not self.defer_check:
            self.check()

    def merge(self, paths: dict[str, str]) -> None:
        """Add what other processes met (under DDP each reads only its share of the split)."""
        for path, message in paths.items():
            self.paths.setdefault(path, message)
        self.check()

    def check(self) -> None:
        total = max(1, len(self.dataset))
        if len(self.paths) > self.max_fraction * total:
            first = next(iter(self.paths.items()))
            raise TrainError(
                f"{len(self.paths)} of {len(self.dataset)} images of the {self.dataset.split} split could not "
                f"be read (more than data.max_bad_fraction={self.max_fraction}); first: {first[0]}: {first[1]}",
                hint="fix or remove the files and re-run `cxr data split`, or raise data.max_bad_fraction "
                "(e.g. --set data.max_bad_fraction=0.05)",
            )


def make_dataset(
    manifest: Manifest,
    split: str,
    spec: PreprocessSpec,
    *,
    train: bool,
    seed: int | None = None,
    via: tuple[int, int] | None = None,
) -> ManifestDataset:
    """The split's dataset with the train (rotation) or eval transform (``via``: see ``eval_transform``)."""
    transform = train_transform(spec) if train else eval_transform(spec, via)
    return ManifestDataset(manifest, split, transform, seed=seed if train else None)


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of this process's share: in training, part ``rank`` of each global batch of a permutation
    (a last batch giving some process fewer than 2 images is dropped, for BatchNorm); in evaluation, its
    contiguous part of the split in order."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        shard: DistContext = SINGLE,
    ) -> None:
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.generator, self.shard = generator, shard

    def _global_batches(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        small = self.shuffle and self.n > 1 and rest < 2 * self.shard.world_size
        return full + (1 if rest and not small else 0)

    def _own(self) -> list[int]:
        parts = np.array_split(np.arange(self.n), self.shard.world_size)
        return [int(i) for i in parts[self.shard.rank]]

    def __len__(self) -> int:
        if self.shuffle:
            return self._global_batches()
        return -(-len(self._own()) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            own = self._own()
            for start in range(0, len(own), self.batch_size):
                yield own[start : start + self.batch_size]
            return
        # drawn lazily, after DataLoader has taken its worker seed from the same generator
        order = torch.randperm(self.n, generator=self.generator).tolist()
        for k in range(self._global_batches()):
            chunk = order[k * self.batch_size : (k + 1) * self.batch_size]
            part = np.array_split(np.arange(len(chunk)), self.shard.world_size)[self.shard.rank]
            yield [chunk[int(i)] for i in part]


def make_loader(
    dataset: ManifestDataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
    shard: DistContext = SINGLE,
) -> DataLoader[Sample]:
    """``shuffle`` (training): ``batch_size`` is the global batch; else this process's evaluation batch."""
    sampler = GlobalBatchSampler(
        len(dataset), batch_size, shuffle=shuffle, generator=generator if shuffle else None, shard=shard
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=generator,
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch: the same for the same seed and epoch (so resume repeats)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1)[0]))
