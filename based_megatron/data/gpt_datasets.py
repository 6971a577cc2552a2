"""Training-side data: megatron-core ``GPTDataset`` blends and a resumable data-parallel sampler.

``build_gpt_datasets`` goes through megatron-core's ``BlendedMegatronDatasetBuilder`` +
``GPTDatasetConfig`` + ``GPTDataset``: Megatron's ``--data-path`` syntax (``0.7 a 0.3 b``),
``--split 969,30,1``, sequence length, seed, EOD handling and the optional reset of position ids /
attention mask at document boundaries. The sample order is a pure function of (datasets, split,
sizes, seq_length, seed); ``PretrainingSampler`` walks it from any consumed-sample index, so a
resumed run sees exactly the samples it would have seen.

Works with or without ``torch.distributed`` initialised: with it, rank 0 builds the index caches
first and the other ranks load them after a barrier (megatron-core's builder does this).
"""

import contextlib
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from based_megatron.data.indexed import open_indexed_dataset
from based_megatron.data.tokenizers import (
    Tokenizer,
    load_tokenizer_for_dataset,
    tokenizer_dir_for_dataset,
)


def parse_data_path(data_path: Union[str, Sequence[str]]) -> Tuple[List[str], Optional[List[float]]]:
    """Megatron's ``--data-path``: ``[prefix, ...]`` or ``[weight, prefix, weight, prefix, ...]``.

    Returns (prefixes, weights or None). A string is split on whitespace.
    """
    items = data_path.split() if isinstance(data_path, str) else list(data_path)
    if not items:
        raise ValueError("--data-path is empty; give one or more dataset prefixes")
    if len(items) % 2 == 1 or not _is_number(items[0]):
        for item in items:
            if _is_number(item):
                raise ValueError(f"--data-path {' '.join(items)}: expected either only prefixes or "
                                 f"'weight prefix' pairs, got a stray number {item!r}")
        return items, None
    weights, prefixes = [], []
    for weight, prefix in zip(items[0::2], items[1::2]):
        if not _is_number(weight):
            raise ValueError(f"--data-path: {weight!r} should be a weight (a number) before {prefix}")
        if _is_number(prefix):
            raise ValueError(f"--data-path: expected a dataset prefix after weight {weight}, got "
                             f"{prefix!r}")
        if float(weight) <= 0:
            raise ValueError(f"--data-path: weight {weight} of {prefix} must be > 0")
        weights.append(float(weight))
        prefixes.append(prefix)
    return prefixes, weights


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def resolve_tokenizer(prefixes: Sequence[str], tokenizer: Optional[Tokenizer]) -> Tokenizer:
    """The tokenizer to train with: the given one, else the one recorded with the datasets.
    Every recorded tokenizer must match it."""
    recorded = {p: load_tokenizer_for_dataset(p) for p in prefixes
                if os.path.isdir(tokenizer_dir_for_dataset(p))}
    if tokenizer is None:
        if prefixes[0] not in recorded:
            raise ValueError(f"dataset {prefixes[0]} has no recorded tokenizer "
                             f"({tokenizer_dir_for_dataset(prefixes[0])}); pass one explicitly")
        tokenizer = recorded[prefixes[0]]
    for prefix, other in recorded.items():
        if other.fingerprint != tokenizer.fingerprint:
            raise ValueError(f"dataset {prefix} was tokenized with {other} (fingerprint "
                             f"{other.fingerprint}), but training uses {tokenizer} (fingerprint "
                             f"{tokenizer.fingerprint})")
    return tokenizer


def build_gpt_datasets(data_path: Union[str, Sequence[str]], split: str, seq_length: int, seed: int,
                       train_samples: int, valid_samples: int, test_samples: int,
                       tokenizer: Optional[Tokenizer] = None, reset_position_ids: bool = False,
                       reset_attention_mask: bool = False, eod_mask_loss: bool = False,
                       create_attention_mask: Optional[bool] = None,
                       cache_dir: Optional[str] = None) -> Tuple[Optional[GPTDataset], ...]:
    """(train, valid, test) megatron-core GPT datasets (a split is None when its weight is 0).

    Each sample is a dict of ``tokens``, ``labels``, ``loss_mask``, ``position_ids`` (and
    ``attention_mask`` when ``create_attention_mask``; by default only with
    ``reset_attention_mask``, since the causal mask is the model's job). ``cache_dir`` holds the
    shuffled index caches (default: ``<directory of the first dataset>/gpt_index_cache``).
    """
    prefixes, weights = parse_data_path(data_path)
    tokenizer = resolve_tokenizer(prefixes, tokenizer)
    if seq_length < 1:
        raise ValueError(f"seq_length must be >= 1, got {seq_length}")
    parts = split.split(",")
    if not 1 <= len(parts) <= 3 or not all(_is_number(p) and float(p) >= 0 for p in parts) \
            or sum(map(float, parts)) <= 0:
        raise ValueError(f"--split {split!r}: expected up to three comma-separated non-negative "
                         "weights with a positive sum, such as 969,30,1")
    split_matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    sizes = [train_samples, valid_samples, test_samples]
    for prefix in prefixes:
        # a clear error for a missing/truncated/foreign file, or an empty split
        _check_splits_have_tokens(prefix, open_indexed_dataset(prefix, tokenizer), split,
                                  split_matrix, sizes)
    if create_attention_mask is None:
        create_attention_mask = reset_attention_mask
    if reset_attention_mask and not create_attention_mask:
        raise ValueError("reset_attention_mask needs create_attention_mask (the reset lives in "
                         "the attention mask)")
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=(prefixes, weights), split=split,
        path_to_cache=cache_dir or os.path.join(os.path.dirname(os.path.abspath(prefixes[0])),
                                                "gpt_index_cache"),
        tokenizer=tokenizer, reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config)
    with _process_group_for_single_process():
        return tuple(builder.build())


def _check_splits_have_tokens(prefix, dataset, split, split_matrix, sizes) -> None:
    """megatron-core loops forever when asked for samples from a split without tokens."""
    documents = len(dataset.sequence_lengths)
    for name, bounds, size in zip(("train", "valid", "test"), split_matrix, sizes):
        if bounds is None or not size:
            continue
        # the same document range megatron-core's builder gives this split
        begin, end = int(round(bounds[0] * documents)), int(round(bounds[1] * documents))
        if int(dataset.sequence_lengths[begin:end].sum()) == 0:
            raise ValueError(f"dataset {prefix}: --split {split} leaves its {name} split "
                             f"{end - begin} of {documents} documents and no tokens, but "
                             f"{size} {name} samples were requested; use a larger dataset, "
                             f"another split, or 0 {name} samples")


@contextlib.contextmanager
def _process_group_for_single_process():
    """megatron-core 0.16's BlendedDataset calls ``torch.distributed.get_rank()`` on a cache miss
    even when torch.distributed is not initialised; give a lone process a one-rank gloo group for
    the build (its barriers are then no-ops) and remove it afterwards."""
    if torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                         world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


class PretrainingSampler:
    """Megatron's ``MegatronPretrainingSampler``: consecutive global batches of
    ``micro_batch_size * data_parallel_size`` sample indices from ``consumed_samples`` on; rank r
    takes the r-th ``micro_batch_size`` slice of each. Resuming = passing the consumed count."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int = 0, data_parallel_size: int = 1,
                 drop_last: bool = True) -> None:
        if total_samples <= 0:
            raise ValueError(f"no samples to draw from (total_samples={total_samples})")
        if not 0 <= consumed_samples < total_samples:
            raise ValueError(f"consumed_samples={consumed_samples} must lie in [0, {total_samples}): "
                             "the dataset was built for fewer samples than the run consumed")
        if micro_batch_size < 1 or data_parallel_size < 1:
            raise ValueError("micro_batch_size and data_parallel_size must be >= 1")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise ValueError(f"data_parallel_rank={data_parallel_rank} is outside "
                             f"[0, {data_parallel_size})")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.rank = data_parallel_rank
        self.global_batch = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        remaining = self.total_samples - self.consumed_samples
        full, rest = divmod(remaining, self.global_batch)
        return full + (1 if rest and not self.drop_last and rest > self.rank * self.micro_batch_size
                       else 0)

    def __iter__(self):
        for start in range(self.consumed_samples, self.total_samples, self.global_batch):
            stop = min(start + self.global_batch, self.total_samples)
            if stop - start < self.global_batch and self.drop_last:
                return
            mine = range(start + self.rank * self.micro_batch_size,
                         min(start + (self.rank + 1) * self.micro_batch_size, stop))
            if len(mine):
                yield list(mine)


def build_pretraining_data_loader(dataset, consumed_samples: int, micro_batch_size: int,
                                  data_parallel_rank: int = 0, data_parallel_size: int = 1,
                                  num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader yielding this rank's micro-batches (dicts of stacked tensors) in order."""
    sampler = PretrainingSampler(len(dataset), consumed_samples, micro_batch_size,
                                 data_parallel_rank, data_parallel_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
