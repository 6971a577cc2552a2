"""megatron-core on a CPU-only torch: the one place with CPU workarounds.

megatron-core 0.16 assumes CUDA in a few spots: it places buffers with ``device=torch.cuda.current_device()``
or a literal ``device="cuda"``, keeps its model-parallel RNG states with ``torch.cuda.get/set_rng_state``, calls
``torch.cuda.synchronize()`` around p2p sends and moves the tied embedding with ``Tensor.cuda()``. ``apply()``
patches exactly those spots so TP / SP / PP (gloo), dist_checkpointing and activation recompute run on CPU with
the same numbers as on GPU. It does nothing when CUDA is available, and is idempotent.

Each patch names the megatron-core place it covers. CPU runs are for CI and small models, not for speed.
"""

import contextlib
import functools
import importlib

import torch

_applied = False

# Modules whose ``torch`` global is replaced by ``_CPU_TORCH`` (device "cuda" -> "cpu", see _CpuTorch).
_MODULES_USING_CUDA_DEVICE = [
    # sequence-parallel all-gather / reduce-scatter buffers: torch.empty(..., device=torch.cuda.current_device())
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    # GlobalMemoryBuffer.get_tensor (SP all-gather in linear_with_grad_accumulation_and_async_allreduce)
    "megatron.core.utils",
    # RotaryEmbedding.__init__ / forward: inv_freq moved to torch.cuda.current_device()
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    # p2p shape exchange buffers on torch.cuda.current_device() and torch.cuda.synchronize() after sends
    "megatron.core.pipeline_parallel.p2p_communication",
    # forward_backward_* : total_num_tokens = torch.zeros([], ..., device="cuda")
    "megatron.core.pipeline_parallel.schedules",
    # DotProductAttention softmax_offset buffers; sliding-window mask helper in transformer.utils
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.utils",
    # get_grad_norm_fp32 / clip_grad_by_total_norm_fp32 / count_zeros_fp32: literal device="cuda" tensors
    "megatron.core.optimizer.clip_grads",
    # dist_checkpointing save: torch.cuda.synchronize() in preload_tensors, device="cuda" / current_device()
    # flags in the save-plan verification and async-call bookkeeping, synchronize in the fully-parallel wrapper
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.tensor_aware_state_dict",
]


def _cpu_device(device):
    """Map a CUDA device spec to CPU; leave anything else alone."""
    if device is None:
        return None
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _on_cpu(factory):
    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    return wrapper


class _CpuCuda:
    """``torch.cuda`` as seen by the patched megatron-core modules."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device():
        return torch.device("cpu")

    @staticmethod
    def synchronize(device=None):
        return None


class _CpuTorch:
    """``torch`` as seen by the patched megatron-core modules: tensor factories place "cuda" tensors on CPU."""

    _FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "arange", "randn", "rand", "empty_like",
                  "zeros_like", "ones_like")

    def __init__(self):
        self.cuda = _CpuCuda()
        for name in self._FACTORIES:
            setattr(self, name, _on_cpu(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)


_CPU_TORCH = _CpuTorch()


def _patch_module_torch():
    for module_name in _MODULES_USING_CUDA_DEVICE:
        module = importlib.import_module(module_name)
        module.torch = _CPU_TORCH


def _patch_rng():
    """megatron.core.tensor_parallel.random: the "cuda" RNG state becomes the CPU default generator's state.

    Covers CudaRNGStatesTracker.add / fork / get_states (model-parallel RNG for init and dropout) and the
    activation-recompute save/restore (_get_all_rng_states / _set_all_rng_states in CheckpointFunction).
    """
    from megatron.core.tensor_parallel import random as mcore_random

    def get_rng_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_rng_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    def add(self, name, seed):
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        original = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(original)

    mcore_random._get_cuda_rng_state = get_rng_state
    mcore_random._set_cuda_rng_state = set_rng_state
    mcore_random.CudaRNGStatesTracker.add = add


def _patch_tied_embedding_sync():
    """LanguageModule.setup_embeddings_and_output_layer: ``weight.data = weight.data.cuda()`` before the
    all-reduce that makes the first and last pipeline stages start from the same tied embedding."""
    from megatron.core.models.common.language_module.language_module import LanguageModule

    original = LanguageModule.setup_embeddings_and_output_layer

    @functools.wraps(original)
    def setup_embeddings_and_output_layer(self):
        with _tensor_cuda_is_identity():
            return original(self)

    LanguageModule.setup_embeddings_and_output_layer = setup_embeddings_and_output_layer


@contextlib.contextmanager
def _tensor_cuda_is_identity():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _patch_grad_clipping():
    """megatron.core.optimizer.clip_grads.clip_grad_by_total_norm_fp32 asserts
    ``param.grad.type() == 'torch.cuda.FloatTensor'``; the CPU version scales the same fp32 grads."""
    from megatron.core.optimizer import clip_grads

    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
        clip_coeff = max_norm / (total_norm + 1.0e-6)  # same formula as megatron-core
        if clip_coeff < 1.0:
            for grad in grads:
                grad.detach().mul_(clip_coeff)

    clip_grads.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32


def apply() -> bool:
    """Patch megatron-core for CPU if CUDA is absent. Returns True when the patches are active."""
    global _applied
    if torch.cuda.is_available():
        return False
    if not _applied:
        _patch_module_torch()
        _patch_rng()
        _patch_tied_embedding_sync()
        _patch_grad_clipping()
        _applied = True
    return True
