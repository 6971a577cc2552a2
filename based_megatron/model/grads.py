"""Model-parallel gradient reductions that megatron-core's DDP wrapper would otherwise do
(``finalize_model_grads``); call after backward when the model is not wrapped in megatron-core DDP."""

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def sync_model_parallel_grads(model: torch.nn.Module) -> None:
    """1. Sequence parallel: each TP rank saw a slice of the sequence, so grads of parameters marked
    ``sequence_parallel`` (norm weights, row-parallel biases) are summed over the TP group.
    2. Tied embeddings across pipeline stages: the first stage's embedding and the last stage's output layer are
    one weight, so their grads are summed over the embedding group."""
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        for param in model.parameters():
            if getattr(param, "sequence_parallel", False) and param.grad is not None:
                dist.all_reduce(param.grad, group=parallel_state.get_tensor_model_parallel_group())
    tied = getattr(model, "share_embeddings_and_output_weights", False)
    if tied and parallel_state.get_pipeline_model_parallel_world_size() > 1 \
            and parallel_state.is_rank_in_embedding_group(ignore_virtual=True):
        weight = model.shared_embedding_or_output_weight()
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        dist.all_reduce(weight.grad, group=parallel_state.get_embedding_group())
