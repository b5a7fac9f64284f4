"""Training data: PhraseCut+ samples from the configured dataset, in an order that resumes and shards exactly."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .config import SAMPLE_ORDERS, DataSettings, SampleOrder


class GlobalBatchSampler:
    """Endless batches of ``(epoch, index)`` keys: this process's share of every global batch from `start_step`.

    Sample position p (counted from the first step) is entry ``p % N`` of epoch ``p // N``'s permutation, and
    global batch k holds positions ``k*B .. (k+1)*B - 1``; process r takes the r-th contiguous slice of it.
    So a global batch holds the same samples for any number of processes (unlike `DistributedSampler`, which
    shards whole epochs), and a resumed run continues at the exact sample where the checkpoint was taken.

    `order` "shuffle" draws a new permutation every epoch. "original" is the released training's order: images
    (samples sharing a key in `groups`) are shuffled once, each image's samples stay together in dataset order, and
    every epoch repeats that order (the PhraseCut loader shuffles its image ids once; the DataLoader never
    shuffles). "sequential" is the dataset's own order.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
        order: SampleOrder = "shuffle",
        groups: Sequence[Hashable] | None = None,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("the training dataset is empty")
        if global_batch_size % world_size:
            raise ValueError(
                f"optim.batch_size {global_batch_size} is not divisible by the {world_size} processes of the run"
            )
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        if order not in SAMPLE_ORDERS:
            raise ValueError(f"data.order must be one of {', '.join(SAMPLE_ORDERS)}, got {order!r}")
        if groups is not None and len(groups) != dataset_size:
            raise ValueError(f"{len(groups)} group keys for {dataset_size} samples")
        self.order = order
        self.groups = groups
        self._permutations: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of one epoch (identity without shuffling)."""
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            if self.order == "shuffle":
                generator = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(self.dataset_size, generator=generator)
            elif self.order == "original":
                order = self._grouped_order()
            else:
                order = torch.arange(self.dataset_size)
            self._permutations[epoch] = order
        return self._permutations[epoch]

    def _grouped_order(self) -> torch.Tensor:
        members: dict[Hashable, list[int]] = {}
        for index, key in enumerate(self.groups if self.groups is not None else range(self.dataset_size)):
            members.setdefault(key, []).append(index)
        images = list(members.values())
        shuffled = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed)).tolist()
        return torch.tensor([index for image in shuffled for index in images[image]])

    def keys(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(epoch, index)`` keys of global batch `step`."""
        first = step * self.global_batch_size + self.rank * self.batch_size
        keys = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.dataset_size)
            keys.append((epoch, int(self.permutation(epoch)[offset])))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1


# Key of a training sample dict that lists the samples skipped in its place (one "problem" line each; "" if none).
SKIPPED_KEY = "skipped_samples"
# Unreadable samples in a row after which the data is taken to be broken rather than a few files.
MAX_CONSECUTIVE_BAD = 16


class BadSampleError(RuntimeError):
    """Training data that cannot be read: too many bad samples, or many in a row."""


class EpochIndexed(Dataset):
    """A map-style dataset read with ``(epoch, index)`` keys; datasets with `set_epoch` (PhraseCut+) get the
    epoch before each item, so an item's random draws depend only on its key, never on worker or order.

    With `skip_bad`, a sample that cannot be read (OSError / ValueError: a corrupt or missing image, a mask of
    the wrong size) is replaced by the next readable index, and the sample dict's `SKIPPED_KEY` entry says
    which and why, so the trainer can warn and count (workers are other processes)."""

    def __init__(self, dataset: Dataset, *, skip_bad: bool = False) -> None:
        self.dataset = dataset
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if not self.skip_bad:
            return self._item(epoch, index)
        problems: list[str] = []
        for offset in range(min(MAX_CONSECUTIVE_BAD, len(self))):
            candidate = (index + offset) % len(self)
            try:
                sample = self._item(epoch, candidate)
            except (OSError, ValueError) as error:
                problems.append(f"sample {candidate}: {' '.join(str(error).split()) or type(error).__name__}")
                continue
            return {**sample, SKIPPED_KEY: "\n".join(problems)}
        raise BadSampleError(
            f"{len(problems)} training samples in a row from index {index} cannot be read; the last: {problems[-1]}"
        )

    def _item(self, epoch: int, index: int) -> Any:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def referring_source(settings: DataSettings, *, validation: bool = False) -> Any:
    """The (image, mask, phrase) reader of the training data, or of the validation data (`settings.val`)."""
    if settings.root is None:
        raise ValueError("data.root: set the dataset location")
    if settings.format == "phrasecut":
        from ..data.phrasecut import PhraseCut

        return PhraseCut(settings.root, settings.val if validation else settings.split)
    location = settings.val if validation else settings.root
    if settings.format == "coco":
        from ..data.coco import CocoInstances, CocoReferringSource
        from ..data.coco20i import excluded_category_ids

        instances = CocoInstances(location, settings.image_dir)
        if not settings.exclude_categories:
            return CocoReferringSource(instances)
        excluded = excluded_category_ids(instances, settings.exclude_categories, "data.exclude_categories")
        return CocoReferringSource(instances, category_ids=set(instances.categories) - excluded)
    if settings.format == "folder":
        from ..data.folder import FolderSource

        return FolderSource(location)
    raise ValueError(f"data.format: unknown dataset format {settings.format!r}")


def _phrase_filter(settings: DataSettings) -> Any:
    if settings.remove_classes is None:
        return None
    from ..data.wordnet import PhraseFilter

    return PhraseFilter.from_preset(settings.remove_classes)


def build_training_dataset(settings: DataSettings, seed: int) -> Dataset:
    """PhraseCut+ training samples (`clipseg.data.phrasecut_plus.PhraseCutPlus`) as `settings` describe them."""
    from ..data.phrasecut_plus import PhraseCutPlus

    return PhraseCutPlus(
        referring_source(settings),
        image_size=settings.image_size,
        negative_prob=settings.negative_prob,
        with_visual=settings.with_visual,
        mix_text_min=settings.mix_text_min,
        mix_text_max=settings.mix_text_max,
        prompt_templates=settings.prompt_templates,
        visual_variant=settings.visual_variant,
        exclude_phrase=_phrase_filter(settings),
        crop=settings.crop,
        only_visual=settings.only_visual,
        seed=seed,
    )


def build_validation_dataset(settings: DataSettings, seed: int) -> Dataset | None:
    """Text-prompt samples of `settings.val` (whole images, one fixed template, no negatives), or None."""
    if settings.val is None:
        return None
    from ..data.phrasecut_plus import PhraseCutPlus

    return PhraseCutPlus(
        referring_source(settings, validation=True),
        image_size=settings.image_size,
        negative_prob=0.0,
        with_visual=False,
        prompt_templates="fixed",
        exclude_phrase=_phrase_filter(settings),
        crop=False,
        seed=seed,
    )
