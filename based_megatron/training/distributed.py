"""Process groups: torch.distributed through DeepSpeed, megatron-core parallel_state, and the views DeepSpeed needs.

Rank layout (the same in megatron-core and DeepSpeed): tensor-parallel fastest, then data, then pipeline:
    global rank = tp_rank + tp * (dp_rank + dp * pp_rank)
megatron-core's default order "tp-cp-ep-dp-pp" and DeepSpeed's PipeModelDataParallelTopology(axes pipe, data, model)
both give this layout, so the pipeline grid and parallel_state agree on every group.
"""

import os
import random

import numpy as np
import torch


def initialize_distributed(tensor_parallel_size, pipeline_parallel_size, seed):
    """Start torch.distributed (nccl on GPU, gloo on CPU), megatron-core parallel_state and its RNG tracker."""
    import deepspeed
    from megatron.core import parallel_state, tensor_parallel

    from based_megatron import megatron_cpu_compat

    _default_single_process_env()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        megatron_cpu_compat.apply()
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores between the ranks of this node
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
        # DeepSpeed's CPU shared-memory all-reduce JIT-compiles (~80 s) and leaves a 66 MB
        # /dev/shm/deepspeed_allreduce_buffer_* file per rank behind: use plain gloo collectives instead.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size,
                                             pipeline_model_parallel_size=pipeline_parallel_size)
    set_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _default_single_process_env():
    """`python -m based_megatron.training ...` without a launcher runs as a world of one."""
    defaults = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if "RANK" not in os.environ:
        for key, value in defaults.items():
            os.environ.setdefault(key, value)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_layer(seed):
    """seed_fn for DeepSpeed's PipelineModule(seed_layers=True): stage bounds arrive as numpy ints."""
    set_seed(int(seed))


def pipeline_topology():
    """DeepSpeed's topology matching megatron-core parallel_state (see the module docstring)."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    from megatron.core import parallel_state as ps

    return PipeModelDataParallelTopology(num_pp=ps.get_pipeline_model_parallel_world_size(),
                                         num_mp=ps.get_tensor_model_parallel_world_size(),
                                         num_dp=ps.get_data_parallel_world_size())


class MegatronMPU:
    """megatron-core parallel_state seen through the `mpu` interface DeepSpeed's engine expects (used at PP = 1,
    where the model-parallel group is the tensor-parallel group; with PP > 1 the engine uses the pipeline grid)."""

    def __init__(self):
        from megatron.core import parallel_state

        self.ps = parallel_state
        assert parallel_state.get_pipeline_model_parallel_world_size() == 1, "MegatronMPU is for PP = 1"

    def get_model_parallel_rank(self):
        return self.ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self):
        return self.ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self.ps.get_tensor_model_parallel_group()

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self):
        return self.ps.get_tensor_model_parallel_src_rank()

    def get_data_parallel_rank(self):
        return self.ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self):
        return self.ps.get_data_parallel_world_size()

    def get_data_parallel_group(self):
        return self.ps.get_data_parallel_group()

    def get_data_parallel_group_ranks(self):
        return self.ps.get_data_parallel_global_ranks()

    def get_pipeline_model_parallel_rank(self):
        return 0

    def get_pipeline_model_parallel_world_size(self):
        return 1


def all_gather_objects(obj):
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def destroy():
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
