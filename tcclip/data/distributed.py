"""Distributed evaluation that counts every video exactly once.

``torch.utils.data.DistributedSampler`` pads the index list so that every rank gets the same number of samples:
with 1530 test videos on 4 GPUs, two videos would be evaluated twice and counted twice in the accuracy.
:class:`EvalDistributedSampler` gives rank r the indices r, r + W, r + 2W, ... without padding, so ranks may get one
batch fewer. Lightning leaves samplers that are already ``DistributedSampler`` instances alone, so passing this one
to the evaluation DataLoaders is enough. Metrics must then be reduced with a sum over ranks (torchmetrics does), and
the evaluation step must not run collective operations of its own (ranks may see different numbers of batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class EvalDistributedSampler(DistributedSampler):
    """In-order, non-padded, non-shuffled sharding of a dataset over ranks (for evaluation only)."""

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        # DistributedSampler sized every rank for the padded total; this rank's true share is smaller or equal.
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
