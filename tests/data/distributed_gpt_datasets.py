"""Run by test_gpt_datasets.py under torchrun (2 gloo ranks): build_gpt_datasets with
torch.distributed initialised, then check every rank sees the same samples and its own shard."""

import sys

import torch
import torch.distributed as dist

from based_megatron.data.gpt_datasets import build_gpt_datasets, build_pretraining_data_loader


def main(prefix: str, cache_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    train, _, _ = build_gpt_datasets([prefix], "969,30,1", seq_length=64, seed=7, train_samples=64,
                                     valid_samples=8, test_samples=2, cache_dir=cache_dir)
    assert dist.is_initialized()  # the caller's process group is left in place
    # every rank reads the same sample order
    first = torch.stack([train[i]["tokens"] for i in range(4)])
    gathered = [torch.zeros_like(first) for _ in range(world)]
    dist.all_gather(gathered, first)
    assert all(torch.equal(g, gathered[0]) for g in gathered)
    # each rank takes its own micro-batch of every global batch, resuming at 8 consumed samples
    loader = build_pretraining_data_loader(train, consumed_samples=8, micro_batch_size=2,
                                           data_parallel_rank=rank, data_parallel_size=world)
    mine = next(iter(loader))["tokens"]
    expected = torch.stack([train[8 + 2 * rank + j]["tokens"] for j in range(2)])
    assert torch.equal(mine, expected)
    dist.barrier()
    print("rank ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
