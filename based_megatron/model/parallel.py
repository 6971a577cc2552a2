"""A one-process megatron-core parallel state (TP = PP = DP = 1, gloo) for tools, tests and conversions."""

import contextlib
import os
import shutil
import tempfile

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from .. import megatron_cpu_compat


@contextlib.contextmanager
def single_process_model_parallel(seed: int = 1234):
    """Initialise torch.distributed (world of 1) and megatron-core's parallel state unless already done;
    tear down on exit only what was set up here."""
    megatron_cpu_compat.apply()
    started_dist = not dist.is_initialized()
    store_dir = None
    if started_dist:
        store_dir = tempfile.mkdtemp(prefix="based_megatron_store_")
        store = dist.FileStore(os.path.join(store_dir, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    started_mp = not parallel_state.model_parallel_is_initialized()
    if started_mp:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if started_mp:
            parallel_state.destroy_model_parallel()
        if started_dist:
            dist.destroy_process_group()
            shutil.rmtree(store_dir, ignore_errors=True)
