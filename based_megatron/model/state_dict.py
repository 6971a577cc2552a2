"""Full (TP-merged, all-stage) tensors <-> this rank's shards, located through megatron-core's
``sharded_state_dict`` (the map dist_checkpointing uses, so keys are the global names of docs/architecture.md:
``decoder.layers.{global i}...``; a tied output layer on the last pipeline stage maps to the embedding key)."""

from typing import Dict, Iterator, List, Tuple

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

Shard = Tuple[str, Tuple[slice, ...], torch.Tensor, Tuple[int, ...]]


def _walk(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk(value)
    elif isinstance(node, (ShardedTensor, ShardedTensorFactory)):
        yield node


def _pieces(item, grads: bool) -> List[ShardedTensor]:
    """The ShardedTensors of one sharded_state_dict entry, holding the parameter (or its grad) pieces."""
    source = item.data.grad if grads else item.data
    if source is None:
        return []
    if isinstance(item, ShardedTensorFactory):  # e.g. SwiGLU fc1: gate and value halves sharded separately
        return list(_walk(item.build_fn(item.key, source, item.replica_id, item.flattened_range)))
    return [ShardedTensor(item.key, source, item.dtype, item.local_shape, item.global_shape, item.global_offset,
                          item.axis_fragmentations, item.replica_id, item.prepend_axis_num)]


def local_shards(model: torch.nn.Module, grads: bool = False) -> Iterator[Shard]:
    """Yield (global key, slices of the full tensor, local tensor, full shape) for every parameter shard here.

    With grads=True the local tensor is the matching piece of the parameter's .grad (parameters without
    a grad are skipped)."""
    for item in _walk(model.sharded_state_dict()):
        for piece in _pieces(item, grads):
            if len(piece.global_offset) != piece.data.dim():
                raise ValueError(f"{piece.key}: shards with prepended (stacked-layer) axes are not supported; "
                                 "build the config with hetereogenous_dist_checkpoint=True")
            slices = tuple(slice(o, o + n) for o, n in zip(piece.global_offset, piece.local_shape))
            yield piece.key, slices, piece.data, piece.global_shape


@torch.no_grad()
def full_state_dict(model: torch.nn.Module, grads: bool = False) -> Dict[str, torch.Tensor]:
    """{global key: full tensor} of a model that holds every shard (TP = PP = 1), e.g. a single-process model."""
    full, filled = {}, {}
    for key, slices, local, shape in local_shards(model, grads):
        if key not in full:
            full[key] = local.new_empty(shape)
            filled[key] = 0
        full[key][slices] = local
        filled[key] += local.numel()
    partial = [key for key, tensor in full.items() if filled[key] != tensor.numel()]
    if partial:
        raise ValueError(f"full_state_dict: this rank holds only part of {partial[:3]}; use dist_checkpointing "
                         "to merge a model-parallel model")
    return full


@torch.no_grad()
def load_full_state_dict(model: torch.nn.Module, full: Dict[str, torch.Tensor]) -> None:
    """Copy each full tensor's slice into this rank's shard (any TP x PP layout)."""
    for key, slices, local, _ in local_shards(model):
        if key not in full:
            raise KeyError(f"load_full_state_dict: no tensor {key!r} in the given state dict")
        local.copy_(full[key][slices])
