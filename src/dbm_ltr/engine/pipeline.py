"""Where batches are made: ``data.pipeline = auto | loader | device``, as one interface,
:class:`InputPipeline`, whose batches arrive on the training device ready for the model
(decoded, augmented, normalised), for training and for evaluation.

* :class:`LoaderPipeline`: a ``DataLoader`` whose workers decode and augment each image with
  the PIL recipes of :mod:`dbm_ltr.data.transforms`; batches that a data set leaves undecoded
  (``data.decode=device``) or unnormalised (the large-scale recipes) are finished on the device.
* :class:`DevicePipeline`: the long-tailed uint8 images are held as one tensor on the training
  device and augmented there a chunk of batches at a time with the batched recipes of
  :mod:`dbm_ltr.data.batch_augment` (same operations and probabilities, every image its own
  draws). On a GPU this keeps the GPU busy instead of waiting for loader processes.
* ``auto`` (default): ``device`` when the data set and every view of the method have a batched
  recipe (the CIFAR data sets), on any device: it is the faster of the two on a GPU and on the
  CPU too (``benchmarks/gpu_throughput.py``); else ``loader``.

Both take the batch order from the trainer (a seeded permutation, or ``DistributedSampler``'s
shard under torchrun) and draw their augmentation from seeds derived from the epoch's seed: the
loader one per batch (:class:`SeededSamples`), the device pipeline one per chunk of batches
(:class:`DeviceBatches`), so a resumed run repeats its epochs exactly with either, from any
batch. The evaluation set follows the same choice.
"""

from __future__ import annotations

import inspect
import random
import signal
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from ..data import DATASET_INFO, EncodedBatch, batch_normalizer
from ..data.batch_augment import BATCH_RECIPES, create_batch_recipe
from .config import Config, ConfigError
from .distributed import DistInfo, loader_workers, shard_indices

__all__ = [
    "DeviceBatches",
    "DevicePipeline",
    "InputPipeline",
    "LoaderPipeline",
    "SeededSamples",
    "build_pipeline",
    "derived_seed",
    "epoch_seed",
    "resolve_pipeline",
    "seed_everything",
    "to_device",
    "transform_names",
]


def to_device(images, device: torch.device):
    """Images (a tensor or a list of views) to ``device``, in their layout: a model in
    channels-last memory (``train.channels_last``) runs its convolutions channels-last on
    any input."""
    if isinstance(images, (list, tuple)):
        return [to_device(x, device) for x in images]
    return images.to(device, non_blocking=True)


def transform_names(config: Config, views: Sequence[str]) -> list[str]:
    """The registered transform name of each training view (``regular`` / ``contrastive``), or
    ``data.augment_views`` where it names one per view."""
    given = list(config.data.augment_views)
    if given:
        if len(given) != len(views):
            raise ConfigError(
                f"data.augment_views names {len(given)} transform(s), but method {config.method.name} "
                f"trains on {len(views)} view(s) per image; name one per view"
            )
        return given
    info = DATASET_INFO[config.data.name]
    names = []
    for kind in views:
        if kind == "regular":
            names.append(config.data.augment or info["train_transform"])
        elif kind == "contrastive":
            if not info.get("contrastive_transform"):
                raise ConfigError(f"data set {config.data.name!r} has no contrastive view recipe")
            names.append(info["contrastive_transform"])
        else:
            raise ValueError(f"unknown view kind {kind!r}")
    return names


def _device_support(config: Config, views: Sequence[str]) -> str:
    """Why the device pipeline cannot run this config ("" if it can)."""
    info = DATASET_INFO[config.data.name]
    missing = [n for n in transform_names(config, views) + [info["test_transform"]] if n not in BATCH_RECIPES]
    if missing:
        return (
            f"the transform(s) {', '.join(sorted(set(missing)))} of {config.data.name} have no "
            f"batched version (batched: {', '.join(BATCH_RECIPES.names())})"
        )
    return ""


def resolve_pipeline(config: Config, views: Sequence[str], device: torch.device) -> str:
    """``loader`` or ``device`` for ``config.data.pipeline`` on ``device``."""
    wanted = config.data.pipeline
    why_not = _device_support(config, views)
    if wanted == "device" and why_not:
        raise ConfigError(f"data.pipeline=device: {why_not}; use data.pipeline=loader")
    if wanted == "auto":
        return "loader" if why_not else "device"
    return wanted


def _images_tensor(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, H, W) uint8, targets (N,) int64)`` of an in-memory data set on ``device``."""
    data = getattr(dataset, "data", None)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4:
        raise ConfigError(
            f"data.pipeline=device needs the images in memory as a (N, H, W, C) uint8 array "
            f"('data' attribute); {type(dataset).__name__} has none: use data.pipeline=loader"
        )
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous().to(device)
    targets = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long).to(device)
    return images, targets


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of everything random in one epoch (order, augmentation, method randomness), so an
    epoch's randomness depends only on (seed, epoch) and a resumed run repeats it exactly."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def derived_seed(seed: int, k: int) -> int:
    """The ``k``-th seed derived from ``seed`` (a batch's or a chunk's seed in an epoch)."""
    return (seed * 6364136223846793005 + 1442695040888963407 * (k + 1)) % 2**63


class SeededSamples(Dataset):
    """``dataset`` whose transform draws its randomness from a seed per batch: every random draw
    (torch, NumPy, ``random``) for the batch of samples ``indices`` is seeded from ``(seed,
    indices[0])`` (each sample is in one batch an epoch), and ``i`` is appended to each sample
    when ``with_indices``.

    A batch's augmentation then depends on the epoch's seed and the batch alone, not on which
    loader worker prepared it or how many there are, so a run is the same with any
    ``data.workers`` and an epoch can resume from any batch without replaying the ones before.
    In the main process (``workers=0``) the global random state is restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int, with_indices: bool = False) -> None:
        self.dataset, self.seed, self.with_indices = dataset, int(seed), with_indices

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_seed(self, index: int) -> int:
        return derived_seed(self.seed, index)

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The loader's batched fetch: one seed for the batch."""
        saved = (
            None if get_worker_info() is not None else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        )
        seed = self.sample_seed(int(indices[0])) if len(indices) else 0
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed would
        # also queue seeds for every accelerator backend
        try:
            items = [self.dataset[i] for i in indices]
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])
        return [(*item, i) for item, i in zip(items, indices)] if self.with_indices else items

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]


class DeviceBatches:
    """Training batches augmented on the device.

    ``recipe_names`` names one batched recipe per view (``autoaugment``: the policy of those
    that have AutoAugment, see :mod:`dbm_ltr.data.autoaugment`); a batch is ``(view, targets)`` for one
    view and ``([view_1, ...], targets)`` for several, like the loader with ``MultiView``; with
    ``with_indices`` the samples' positions in the data set follow as a third item.

    The images are augmented a chunk of batches at a time (``chunk_images`` images, a whole
    number of batches): every operation then runs once per chunk instead of once per batch,
    which divides the number of kernel launches of the augmentation by the batches in a chunk
    (32 at batch 64), the cost that dominates small CIFAR batches on a GPU. Each chunk's draws
    come from a seed derived from the epoch's seed and the chunk's position, so a batch's
    pixels depend on (seed, order, batch) alone and an epoch resumes exactly from any batch.
    """

    def __init__(
        self,
        dataset: Dataset,
        recipe_names: Sequence[str],
        batch_size: int,
        device: torch.device,
        with_indices: bool = False,
        chunk_images: int = 2048,
        autoaugment: str = "reference",
    ) -> None:
        if batch_size < 1 or chunk_images < 1:
            raise ValueError(f"batch_size and chunk_images must be >= 1, got {batch_size} and {chunk_images}")
        self.dataset = dataset
        self.images, self.targets = _images_tensor(dataset, device)
        self.recipes = [
            create_batch_recipe(
                name,
                **(
                    {"autoaugment": autoaugment}
                    if "autoaugment" in inspect.signature(BATCH_RECIPES.lookup(name)).parameters
                    else {}
                ),
            )
            for name in recipe_names
        ]
        self.batch_size = batch_size
        self.chunk_batches = max(1, chunk_images // batch_size)
        self.device = device
        self.with_indices = with_indices

    def batches(self, order: torch.Tensor, seed: int, start: int, count: int) -> Iterator:
        """Batches ``start .. count - 1`` of the sample ``order`` (CPU), augmented with draws
        seeded from ``seed`` (the epoch's)."""
        order = order.to(self.device, non_blocking=True)
        size, per_chunk = self.batch_size, self.chunk_batches
        for chunk in range(start // per_chunk, -(-count // per_chunk)):
            first, last = chunk * per_chunk, min((chunk + 1) * per_chunk, count)
            index = order[first * size : last * size]
            generator = torch.Generator().manual_seed(derived_seed(seed, chunk))
            raw = self.images.index_select(0, index)
            views = [recipe(raw, generator) for recipe in self.recipes]
            targets = self.targets.index_select(0, index)
            for b in range(max(first, start), last):
                part = slice((b - first) * size, (b - first + 1) * size)
                batch = (views[0][part] if len(views) == 1 else [v[part] for v in views]), targets[part]
                yield (*batch, index[part]) if self.with_indices else batch


class InputPipeline:
    """Where a run's batches are made. :meth:`train_batches` yields an epoch's training batches
    ``(images, targets[, indices])`` and :meth:`eval_batches` the evaluation set's
    ``(images, targets)``, each on the training device, ready for the model (a list of views
    for a multi-view method). ``name`` is ``data.pipeline``'s value it implements."""

    name = ""

    def __init__(
        self,
        train_set: Dataset | None,
        test_set: Dataset | None,
        device: torch.device,
        batch_size: int = 0,
        eval_batch_size: int = 256,
        dist_info: DistInfo = DistInfo(),
        train_seed: int = 0,
        with_indices: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.train_set, self.test_set, self.device = train_set, test_set, device
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.dist, self.train_seed, self.with_indices, self.drop_last = dist_info, train_seed, with_indices, drop_last
        self._eval_indices = (
            shard_indices(len(test_set), dist_info) if dist_info.enabled and test_set is not None else None
        )

    def order(self, epoch: int) -> torch.Tensor:
        """This process's sample order in ``epoch``: a permutation seeded by (seed, epoch, rank),
        or ``DistributedSampler``'s shard under torchrun."""
        if self.dist.enabled:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                self.train_set,
                self.dist.world_size,
                self.dist.rank,
                shuffle=True,
                seed=self.train_seed,
                drop_last=self.drop_last,
            )
            sampler.set_epoch(epoch)
            return torch.tensor(list(sampler), dtype=torch.long)
        generator = torch.Generator().manual_seed(epoch_seed(self.train_seed, epoch) + self.dist.rank)
        return torch.randperm(len(self.train_set), generator=generator)

    def train_batches(self, epoch: int, start: int = 0) -> tuple[Iterator[tuple], int]:
        """``(batches, how many)``: ``epoch``'s training batches from batch ``start`` on."""
        order = self.order(epoch)
        size = self.batch_size
        count = len(order) // size if self.drop_last else -(-len(order) // size)
        return self._batches(epoch, order, start, count), count - start

    def _batches(self, epoch: int, order: torch.Tensor, start: int, count: int) -> Iterator[tuple]:
        """Batches ``start .. count - 1`` of the sample ``order``."""
        raise NotImplementedError

    @property
    def eval_steps(self) -> int:
        """How many batches :meth:`eval_batches` yields."""
        n = len(self._eval_indices) if self._eval_indices is not None else len(self.test_set)
        return -(-n // self.eval_batch_size)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's evaluation batches (its shard under torchrun), each image once, in
        order; a new pass every call."""
        raise NotImplementedError


def ignore_interrupts(worker_id: int) -> None:
    """A loader worker leaves Ctrl-C (SIGINT to the terminal's process group) to the training
    process, which stops at a step boundary (workers started by fork inherit its handler; by
    forkserver or spawn they would die of it). SIGTERM keeps its default: the loader ends
    stray workers with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LoaderPipeline(InputPipeline):
    """Batches from ``DataLoader`` worker processes running the PIL recipes (``workers`` of
    them), finished on the device: GPU decoding of undecoded batches (``data.decode=device``)
    and the normalisation the large-scale recipes leave to whole batches."""

    name = "loader"

    def __init__(
        self,
        train_set: Dataset | None,
        test_set: Dataset | None,
        device: torch.device,
        batch_size: int = 0,
        eval_batch_size: int = 256,
        dist_info: DistInfo = DistInfo(),
        train_seed: int = 0,
        with_indices: bool = False,
        drop_last: bool = False,
        workers: int = 0,
    ) -> None:
        super().__init__(
            train_set, test_set, device, batch_size, eval_batch_size, dist_info, train_seed, with_indices, drop_last
        )
        self.workers = workers
        self.normalize = batch_normalizer(getattr(train_set, "transform", None)) if train_set is not None else None
        self.eval_normalize = batch_normalizer(getattr(test_set, "transform", None)) if test_set is not None else None

    def _finish(self, dataset: Dataset, normalize, images, targets, *indices) -> tuple:
        if isinstance(images, EncodedBatch):  # data.decode=device: nvJPEG + GPU transforms
            images, targets, *indices = dataset.decode_batch(images, self.device, targets, *indices)
        images = to_device(images, self.device)
        if normalize is not None:  # uint8 from the loader: normalised here, on the device
            images = normalize(images)
        return (
            images,
            targets.to(self.device, non_blocking=True),
            *[i.to(self.device, non_blocking=True) for i in indices],
        )

    def _batches(self, epoch: int, order: torch.Tensor, start: int, count: int) -> Iterator[tuple]:
        size = self.batch_size
        chunks = [order[b * size : (b + 1) * size].tolist() for b in range(start, count)]
        samples = SeededSamples(self.train_set, epoch_seed(self.train_seed, epoch), self.with_indices)
        loader = DataLoader(
            samples,
            batch_sampler=chunks,
            # the loader's own base seed: drawn from the global generator it would shift the
            # state a mid-epoch checkpoint saved (SeededSamples seeds every sample itself)
            generator=torch.Generator().manual_seed(epoch_seed(self.train_seed, epoch)),
            worker_init_fn=ignore_interrupts,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=getattr(self.train_set, "collate_fn", None),
        )
        for batch in loader:
            yield self._finish(self.train_set, self.normalize, *batch)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.test_set
        shard = Subset(data, self._eval_indices) if self._eval_indices is not None else data
        loader = DataLoader(
            shard,
            batch_size=self.eval_batch_size,
            shuffle=False,
            generator=torch.Generator(),  # evaluation draws nothing from the global generator
            worker_init_fn=ignore_interrupts,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=getattr(data, "collate_fn", None),
        )
        for images, targets in loader:
            yield self._finish(data, self.eval_normalize, images, targets)


class DevicePipeline(InputPipeline):
    """Batches augmented on the device by the batched recipes ``recipe_names`` (one per view;
    ``autoaugment``: the policy of those with AutoAugment); evaluation through ``test_recipe``."""

    name = "device"

    def __init__(
        self,
        train_set: Dataset | None,
        test_set: Dataset | None,
        device: torch.device,
        batch_size: int = 0,
        eval_batch_size: int = 256,
        dist_info: DistInfo = DistInfo(),
        train_seed: int = 0,
        with_indices: bool = False,
        drop_last: bool = False,
        recipe_names: Sequence[str] = (),
        test_recipe: str = "",
        autoaugment: str = "reference",
    ) -> None:
        super().__init__(
            train_set, test_set, device, batch_size, eval_batch_size, dist_info, train_seed, with_indices, drop_last
        )
        self.train = (
            DeviceBatches(
                train_set, recipe_names, batch_size, device, with_indices=with_indices, autoaugment=autoaugment
            )
            if train_set is not None
            else None
        )
        if test_set is not None:
            self.test_images, self.test_targets = _images_tensor(test_set, device)
            self.test_recipe = create_batch_recipe(test_recipe)

    def _batches(self, epoch: int, order: torch.Tensor, start: int, count: int) -> Iterator[tuple]:
        seed = epoch_seed(self.train_seed, epoch) + self.dist.rank  # own stream per process
        return self.train.batches(order, seed, start, count)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.test_set)
        order = torch.arange(n) if self._eval_indices is None else torch.tensor(self._eval_indices, dtype=torch.long)
        order = order.to(self.device)
        generator = torch.Generator()  # the test recipe draws nothing
        for start in range(0, len(order), self.eval_batch_size):
            index = order[start : start + self.eval_batch_size]
            images = self.test_recipe(self.test_images.index_select(0, index), generator)
            yield images, self.test_targets.index_select(0, index)


def build_pipeline(
    config: Config,
    views: Sequence[str],
    train_set: Dataset | None,
    test_set: Dataset | None,
    device: torch.device,
    dist_info: DistInfo = DistInfo(),
    with_indices: bool = False,
) -> InputPipeline:
    """The pipeline ``data.pipeline`` names (``auto``: see :func:`resolve_pipeline`) for a run's
    data sets (``train_set`` ``None``: evaluation only)."""
    d = config.data
    common = dict(
        batch_size=config.optim.batch_size // dist_info.world_size,
        eval_batch_size=d.eval_batch_size,
        dist_info=dist_info,
        train_seed=config.train.seed,
        with_indices=with_indices,
        drop_last=config.train.drop_last,
    )
    if resolve_pipeline(config, views, device) == "device":
        return DevicePipeline(
            train_set,
            test_set,
            device,
            **common,
            recipe_names=transform_names(config, views) if train_set is not None else (),
            test_recipe=DATASET_INFO[d.name]["test_transform"],
            autoaugment=d.autoaugment,
        )
    return LoaderPipeline(train_set, test_set, device, **common, workers=loader_workers(d.workers))
