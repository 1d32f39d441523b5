"""The training data order, made resumable in the middle of an epoch.

A run stopped between two batches (a preempted or cancelled SLURM job, `tcclip.training.preemption`) must go on with the
batches the uninterrupted run would have trained on: the same videos, in the same order, with the same frame
offsets and augmentations. Two pieces make that so:

- `TrainSampler` draws epoch e's order from `seed + e` (a `DistributedSampler`, so under DDP it also shards it and
  Lightning leaves it in place), and hands each video to the dataset together with the seed and the epoch;
  `tcclip.data.dataset.VideoDataset` draws that video's random frame offsets and augmentations from a generator
  seeded with (seed, epoch, index). What a video looks like thus depends neither on the data-loader worker that
  loads it nor on what was loaded before it.
- the loader is torchdata's `StatefulDataLoader`: Lightning stores its `state_dict` (how far the epoch has got) in
  every checkpoint and restores it on resume (`RestoreLoaderPosition` makes sure it does), and the loader skips the
  batches already trained on by advancing the sampler, without loading them.

The RNG draws of the training step itself (mixup, dropout) are restored by `tcclip.training.callbacks.EpochSeed`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import lightning as L
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import Callback
from torch.utils.data import DistributedSampler

SampleKey = tuple[int, int, int]
"""(index in the list, seed, epoch): what `TrainSampler` yields and `VideoDataset.__getitem__` accepts."""


class TrainSampler(DistributedSampler):
    """A shuffled order per epoch, from `seed + epoch` (torch's `DistributedSampler` rule), this rank's share of it,
    as `SampleKey`s.

    Args:
        dataset: the training dataset.
        num_replicas: ranks sharing the data (1 on one device).
        rank: this process's rank.
        seed: the run's seed (`seed_everything`); epoch e's order is drawn from `seed + e`.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        for index in super().__iter__():
            yield (index, self.seed, self.epoch)


class RestoreLoaderPosition(Callback):
    """Put the training loader where the checkpoint says the epoch had got, once the checkpoint is restored.

    Lightning restores a stateful loader's `state_dict` when it first builds the loader. The module's
    `configure_optimizers` builds it earlier (the learning-rate schedule needs `trainer.estimated_stepping_batches`),
    before the checkpoint's loop state is read, so the state would be dropped and the resumed epoch would start again
    from its first batch. This does the restore at `on_train_start`: the sampler gets the resumed epoch (its order
    depends on it) and the loader's iterator is made again from the restored position.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.fit_loop
        states = getattr(loop, "_combined_loader_states_to_load", None)
        loader = getattr(loop, "_combined_loader", None)
        fetcher = getattr(loop, "_data_fetcher", None)
        if not states or not loop.restarting or loader is None or fetcher is None:
            return
        for dataloader in loader.flattened:
            _set_sampler_epoch(dataloader, loop.epoch_progress.current.processed)
        loader._load_state_dicts(states)
        loop._combined_loader_states_to_load = []
        iter(fetcher)  # the iterator made before the restore would start the epoch from its first batch
