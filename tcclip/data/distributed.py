"""Distributed evaluation that counts every video exactly once.

`torch.utils.data.DistributedSampler` pads the index list so that every rank gets the same number of samples: with
1530 test videos on 4 GPUs, two videos would be evaluated twice and counted twice in the accuracy. Lightning's
`UnrepeatedDistributedSampler` gives rank r the indices r, r + W, r + 2W, ... without padding, so ranks may get one
batch fewer. Lightning leaves samplers that are already `DistributedSampler` instances alone, so passing this one to
the evaluation DataLoaders is enough. Metrics must then be reduced with a sum over ranks (torchmetrics does), and the
evaluation step must not run collective operations of its own (ranks may see different numbers of batches).
"""

from __future__ import annotations

from collections.abc import Sized

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler


class EvalDistributedSampler(UnrepeatedDistributedSampler):
    """In-order, non-padded, non-shuffled sharding of a dataset over ranks (for evaluation only).

    Lightning's sampler refuses a rank without samples, a guard for training (DDP synchronises buffers on every
    forward pass, so a rank with one batch fewer would hang it). Evaluation here runs no collective operation per
    batch, so an evaluation set smaller than the number of ranks (a tiny novel-class set on many GPUs) is fine: only
    the sizing is redone here, the iteration is Lightning's.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        DistributedSampler.__init__(self, dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)
