"""Training checkpoints: DeepSpeed's save/load plus what makes them safe to resume, inspect and convert.

Layout of `--save DIR`:

    DIR/latest                      the tag of the newest *complete* checkpoint (written last, tmp + rename)
    DIR/iter_0000100/               one checkpoint (tag `iter_%07d`)
        based_checkpoint.json       layout, model config, TP split dims, iteration (written before `latest`)
        tokenizer/                  the run's tokenizer (data.tokenizers.load_tokenizer reads it)
        rng/tp{t}_pp{p}_dp{d}.pt    each rank's python/numpy/torch RNG states
        mp_rank_XX_model_states.pt  DeepSpeed: module (PP = 1), client state (iteration, data position, schedule)
        layer_XX-model_YY-model_states.pt   DeepSpeed PipelineModule: one file per layer and TP rank (PP > 1)
        *_optim_states.pt           DeepSpeed ZeRO optimizer partitions

A crash (even kill -9) while saving leaves `latest` on the previous checkpoint, so the partial directory is never
loaded; it is deleted by the next save. Only the newest `--keep-last` complete checkpoints are kept.

Resuming needs the same tensor- and pipeline-parallel sizes; the data-parallel size may change (ZeRO's elastic
optimizer-state loading). Another TP/PP layout is refused with a message pointing at `--load-weights-only`, which
reshards the *weights* of any checkpoint (through load_full_state_dict) and starts a fresh optimizer.

Conversion (HF export/import) goes through `load_full_state_dict` and `save_checkpoint_from_full_state_dict`, in
megatron-core GPTModel parameter names (docs/architecture.md) with TP shards merged and PP stages joined. The
embedding keeps its padded vocabulary rows (`config.padded_vocab_size`).
"""

import json
import os
import random
import shutil

import numpy as np
import torch

from based_megatron.training.errors import TrainingError

LATEST = "latest"
META_FILE = "based_checkpoint.json"
FULL_WEIGHTS_FILE = "model_full.pt"
TOKENIZER_DIR = "tokenizer"
RELEASE_TAG = "release"
FORMAT_DEEPSPEED = "deepspeed"
FORMAT_FULL = "full"


def tag_for_iteration(iteration):
    return f"iter_{iteration:07d}"


def _iteration_of_tag(tag):
    return int(tag[len("iter_"):]) if tag.startswith("iter_") and tag[len("iter_"):].isdigit() else None


def _atomic_write_text(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_latest_tag(checkpoint_dir):
    path = os.path.join(checkpoint_dir, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def resolve_tag(checkpoint_dir, iteration=None):
    """The tag of `iteration` (or of `latest`), checked to be a complete checkpoint."""
    if not os.path.isdir(checkpoint_dir):
        raise TrainingError(f"checkpoint directory {checkpoint_dir} does not exist")
    if iteration is not None:
        tag = tag_for_iteration(iteration)
    else:
        tag = read_latest_tag(checkpoint_dir)
        if tag is None:
            raise TrainingError(f"{checkpoint_dir}: no '{LATEST}' file, so no complete checkpoint")
    if not os.path.isfile(os.path.join(checkpoint_dir, tag, META_FILE)):
        raise TrainingError(f"{os.path.join(checkpoint_dir, tag)}: not a complete checkpoint (no {META_FILE})")
    return tag


def read_meta(checkpoint_dir, tag):
    with open(os.path.join(checkpoint_dir, tag, META_FILE)) as f:
        return json.load(f)


def checkpoint_tokenizer_dir(checkpoint_dir, iteration=None):
    """The tokenizer directory stored with a checkpoint (None if the run recorded none)."""
    path = os.path.join(checkpoint_dir, resolve_tag(checkpoint_dir, iteration), TOKENIZER_DIR)
    return path if os.path.isdir(path) else None


# ----------------------------------------------------------------------------------------------------------------
# model config <-> JSON


def config_to_json(config):
    """The architecture fields of a BasedConfig (enough to rebuild it with any parallel layout)."""
    from based_megatron.config import MODEL_FLAGS

    return {field: getattr(config, field) for field in MODEL_FLAGS}


def config_from_json(fields):
    from based_megatron.config import BasedConfig

    return BasedConfig(**fields)


# ----------------------------------------------------------------------------------------------------------------
# saving


def save_checkpoint(engine, save_dir, iteration, client_state, meta, keep_last, tokenizer=None):
    """Save `engine` as tag iter_<iteration> on all ranks; `latest` moves only once every file is written."""
    import deepspeed.comm as dist

    tag = tag_for_iteration(iteration)
    if read_latest_tag(save_dir) == tag:
        return False  # this exact state is already the latest checkpoint
    tag_dir = os.path.join(save_dir, tag)
    if dist.get_rank() == 0:
        if os.path.isdir(tag_dir):  # left over from a save that crashed: never visible, safe to replace
            shutil.rmtree(tag_dir)
        os.makedirs(tag_dir)
    dist.barrier()

    engine.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False)
    _save_rng_state(tag_dir)
    if dist.get_rank() == 0:
        if tokenizer is not None:
            from based_megatron.data.tokenizers import save_tokenizer

            save_tokenizer(tokenizer, os.path.join(tag_dir, TOKENIZER_DIR))
        _atomic_write_text(os.path.join(tag_dir, META_FILE), json.dumps(dict(meta, iteration=iteration), indent=2))
    dist.barrier()
    if dist.get_rank() == 0:
        _atomic_write_text(os.path.join(save_dir, LATEST), tag)
        prune_checkpoints(save_dir, keep_last)
    dist.barrier()
    return True


def prune_checkpoints(save_dir, keep_last):
    """Keep the `keep_last` newest complete checkpoints up to `latest`; delete other iter_* directories."""
    latest = _iteration_of_tag(read_latest_tag(save_dir) or "")
    tags = [name for name in os.listdir(save_dir) if _iteration_of_tag(name) is not None]
    complete = sorted((t for t in tags if _iteration_of_tag(t) <= latest
                       and os.path.isfile(os.path.join(save_dir, t, META_FILE))), key=_iteration_of_tag)
    keep = set(complete[-keep_last:])
    for tag in tags:
        if tag not in keep:
            shutil.rmtree(os.path.join(save_dir, tag), ignore_errors=True)


def _rng_file(tag_dir, tp_rank, pp_rank, dp_rank):
    return os.path.join(tag_dir, "rng", f"tp{tp_rank}_pp{pp_rank}_dp{dp_rank}.pt")


def _parallel_coords():
    from megatron.core import parallel_state as ps

    return (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
            ps.get_data_parallel_rank())


def _save_rng_state(tag_dir):
    path = _rng_file(tag_dir, *_parallel_coords())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                 cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_rng_state(tag_dir):
    tp_rank, pp_rank, dp_rank = _parallel_coords()
    path = _rng_file(tag_dir, tp_rank, pp_rank, dp_rank)
    if not os.path.isfile(path):  # data-parallel size grew: take data-parallel rank 0's state
        path = _rng_file(tag_dir, tp_rank, pp_rank, 0)
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# loading for resume


def inspect_for_resume(load_dir):
    """(tag, meta) of the checkpoint `--load DIR` resumes from, or (None, None) if DIR has none yet."""
    if not os.path.isdir(load_dir) or read_latest_tag(load_dir) is None:
        return None, None
    tag = resolve_tag(load_dir)
    return tag, read_meta(load_dir, tag)


def check_resume_compatible(load_dir, tag, meta, tp, pp, model_json):
    """A resume needs the same model and the same TP/PP layout (the data-parallel size may change)."""
    changed = sorted(k for k in set(model_json) | set(meta["model"]) if model_json.get(k) != meta["model"].get(k))
    if changed:
        details = ", ".join(f"{k}: {meta['model'].get(k)!r} -> {model_json.get(k)!r}" for k in changed)
        raise TrainingError(f"--load {load_dir}: checkpoint {tag} holds another model ({details}); use the model "
                            "flags it was trained with")
    saved_tp, saved_pp = meta["tensor_model_parallel_size"], meta["pipeline_model_parallel_size"]
    if (saved_tp, saved_pp) != (tp, pp):
        raise TrainingError(
            f"--load {load_dir}: checkpoint {tag} was saved with tensor-parallel size {saved_tp} and pipeline-parallel "
            f"size {saved_pp}, this run uses {tp} and {pp}. A resume (optimizer state included) needs the same TP/PP "
            "layout (the data-parallel size may change); add --load-weights-only to reshard the weights into the new "
            "layout and start a fresh optimizer and schedule")


def load_checkpoint(engine, load_dir, tag, saved_data_parallel_size):
    """Resume `engine` (model, optimizer) and this rank's RNG from `tag`; returns DeepSpeed's client state.

    With another data-parallel size, DeepSpeed's engine refuses to load ZeRO optimizer states, although its ZeRO
    optimizer can merge and re-split them when they were saved elastic (`elastic_checkpoint`, on by default here):
    the model and client state are loaded first, then the optimizer from all saved partitions."""
    from megatron.core import parallel_state

    dp_changed = saved_data_parallel_size != parallel_state.get_data_parallel_world_size()
    if dp_changed and not engine.zero_elastic_checkpoint():
        raise TrainingError(f"--load {load_dir}: checkpoint {tag} was saved with data-parallel size "
                            f"{saved_data_parallel_size} without zero_optimization.elastic_checkpoint, so it can only "
                            f"resume with that data-parallel size (this run has "
                            f"{parallel_state.get_data_parallel_world_size()})")
    path, client_state = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=not dp_changed,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise TrainingError(f"--load {load_dir}: DeepSpeed could not load checkpoint {tag}")
    if dp_changed:
        engine.optimizer.load_state_dict(state_dict_list=engine._get_all_zero_checkpoints(load_dir, tag),
                                         load_optimizer_states=True,
                                         load_from_fp32_weights=engine.zero_load_from_fp32_weights(),
                                         param_shapes=engine._get_zero_param_shapes())
    _load_rng_state(os.path.join(load_dir, tag))
    return client_state


# ----------------------------------------------------------------------------------------------------------------
# full (unsharded) state dicts: conversion and weights-only loading


def load_full_state_dict(ckpt_dir, iteration=None):
    """(BasedConfig with TP = PP = 1, {GPTModel parameter name: full tensor}) of a checkpoint.

    TP shards are merged along each parameter's split dim, PP stages joined; the embedding keeps the padded
    vocabulary (config.padded_vocab_size rows). `iteration` None means the `latest` checkpoint.
    """
    return _full_state_dict_of_tag(ckpt_dir, resolve_tag(ckpt_dir, iteration))


def _full_state_dict_of_tag(ckpt_dir, tag):
    from based_megatron.training.model import merge_tensor_parallel, pipe_key_to_gpt_name

    meta = read_meta(ckpt_dir, tag)
    config = config_from_json(meta["model"])
    tag_dir = os.path.join(ckpt_dir, tag)
    if meta["format"] == FORMAT_FULL:
        return config, torch.load(os.path.join(tag_dir, FULL_WEIGHTS_FILE), map_location="cpu", weights_only=True)

    tp = meta["tensor_model_parallel_size"]
    shards = {}  # (layer index, key in layer) -> [tensor of TP rank 0, 1, ...]
    for tp_rank in range(tp):
        for (layer_idx, key), tensor in _layer_states(tag_dir, meta, tp_rank):
            shards.setdefault((layer_idx, key), []).append(tensor)
    split_dims = meta["tensor_parallel_split_dims"]
    full = {}
    for (layer_idx, key), parts in shards.items():
        name = pipe_key_to_gpt_name(layer_idx, key, config.num_layers)
        if name is None:
            continue  # buffers that are not model weights
        dim = split_dims.get(name)
        full[name] = merge_tensor_parallel(name, parts, dim) if dim is not None and tp > 1 else parts[0]
    return config, full


def _layer_states(tag_dir, meta, tp_rank):
    """Yield ((layer index, key inside the layer), tensor) from one TP rank's DeepSpeed files."""
    if meta["engine"] == "pipe":
        suffix = f"-model_{tp_rank:02d}-model_states.pt"
        for name in sorted(os.listdir(tag_dir)):
            if name.startswith("layer_") and name.endswith(suffix):
                layer_idx = int(name[len("layer_"):].split("-")[0])
                state = torch.load(os.path.join(tag_dir, name), map_location="cpu", weights_only=False)
                for key, tensor in state.items():
                    yield (layer_idx, key), tensor
    else:
        path = os.path.join(tag_dir, f"mp_rank_{tp_rank:02d}_model_states.pt")
        module = torch.load(path, map_location="cpu", weights_only=False)["module"]
        for full_key, tensor in module.items():
            layer_idx, key = full_key.split(".", 1)
            yield (int(layer_idx), key), tensor


def save_checkpoint_from_full_state_dict(config, state_dict, out_dir, tokenizer_dir=None):
    """Write converted weights as a checkpoint that `--load out_dir` starts from (any TP/PP layout).

    The checkpoint holds the full tensors (GPTModel names, see load_full_state_dict); `--load` slices each rank's
    shard from them, starts a fresh optimizer and LR schedule at iteration 0 (continued pretraining from imported
    weights). `tokenizer_dir` (a directory data.tokenizers.load_tokenizer reads) is copied alongside.
    """
    tag_dir = os.path.join(out_dir, RELEASE_TAG)
    if os.path.isdir(tag_dir):
        shutil.rmtree(tag_dir)
    os.makedirs(tag_dir)
    tmp = os.path.join(tag_dir, FULL_WEIGHTS_FILE + ".tmp")
    torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}, tmp)
    os.replace(tmp, os.path.join(tag_dir, FULL_WEIGHTS_FILE))
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, os.path.join(tag_dir, TOKENIZER_DIR))
    meta = dict(format=FORMAT_FULL, iteration=0, model=config_to_json(config))
    _atomic_write_text(os.path.join(tag_dir, META_FILE), json.dumps(meta, indent=2))
    _atomic_write_text(os.path.join(out_dir, LATEST), RELEASE_TAG)


def load_weights_into_layers(layers, ckpt_dir, tag, num_layers):
    """Copy each rank's shard of a checkpoint's full weights into the local pipe layers ({index: module}).

    Shards are cut along the parameters' megatron-core TP attributes (`tensor_model_parallel`, `partition_dim`).
    """
    from megatron.core import parallel_state as ps

    from based_megatron.training.model import pipe_key_to_gpt_name, split_tensor_parallel

    _, full = _full_state_dict_of_tag(ckpt_dir, tag)
    tp_rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    for layer_idx, module in layers.items():
        for key, param in module.state_dict(keep_vars=True).items():
            name = pipe_key_to_gpt_name(layer_idx, key, num_layers)
            if name is None:
                continue
            if name not in full:
                raise TrainingError(f"--load {ckpt_dir}: checkpoint {tag} has no weight {name}")
            tensor = full[name]
            if getattr(param, "tensor_model_parallel", False) and tp > 1:
                tensor = split_tensor_parallel(name, tensor, param.partition_dim, tp, tp_rank)
            if tensor.shape != param.shape:
                raise TrainingError(f"--load {ckpt_dir}: {name} has shape {tuple(tensor.shape)} in checkpoint {tag}, "
                                    f"the model expects {tuple(param.shape)} on this rank")
            with torch.no_grad():
                param.copy_(tensor)
