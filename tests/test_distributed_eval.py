"""Distributed evaluation: two CPU processes (gloo) see every video of an odd-length dataset exactly once."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tcclip.data.distributed import EvalDistributedSampler

LENGTH = 11


class _Indices(Dataset):
    def __len__(self) -> int:
        return LENGTH

    def __getitem__(self, index: int) -> int:
        return index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loader = DataLoader(_Indices(), batch_size=2, sampler=EvalDistributedSampler(_Indices()))
        seen = [i for batch in loader for i in batch.tolist()]
        gathered: list[list[int]] = [[] for _ in range(world_size)]
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            with open(os.path.join(out_dir, "seen.json"), "w") as f:
                json.dump({"per_rank": gathered, "len": len(loader.sampler)}, f)
    finally:
        dist.destroy_process_group()


def test_two_processes_count_every_video_once(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    result = json.loads((tmp_path / "seen.json").read_text())
    union = [i for seen in result["per_rank"] for i in seen]
    assert sorted(union) == list(range(LENGTH))  # no index missing, none twice
    assert [len(s) for s in result["per_rank"]] == [6, 5] and result["len"] == 6


def test_plain_distributed_sampler_would_pad():
    """Why the subclass exists: the stock sampler repeats videos to even out the ranks."""
    stock = [list(DistributedSampler(_Indices(), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert len(stock[0]) + len(stock[1]) == LENGTH + 1
    ours = [list(EvalDistributedSampler(_Indices(), num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(ours[0] + ours[1]) == list(range(LENGTH))
    assert isinstance(EvalDistributedSampler(_Indices(), 2, 0), DistributedSampler)  # Lightning leaves it alone
    assert torch.tensor(ours[1]).tolist() == [1, 3, 5, 7, 9]


def test_datamodule_eval_loaders_use_the_non_padding_sampler(data_synth, tmp_path):
    from types import SimpleNamespace

    from tcclip.data.families import Synthetic

    dm = Synthetic(
        root=str(data_synth), protocol="base2novel", num_frames=2, input_size=16, num_workers=0, run_dir=str(tmp_path)
    )
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)  # what Lightning sets under DDP
    base, novel = dm.test_dataloader()
    assert isinstance(novel.sampler, EvalDistributedSampler) and novel.sampler.rank == 1
    assert list(base.sampler) == list(range(1, len(base.dataset), 2))
