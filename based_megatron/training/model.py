"""The Based LM cut into pipeline layers for DeepSpeed, built from the model's own megatron-core pieces.

Layer list (the same indices for every pipeline layout):

    0          EmbeddingPipe       megatron-core LanguageModelEmbedding (+ the tied output projection)
    1 .. L     TransformerLayerPipe  TransformerLayer from based_megatron.model.layer_spec(symbol)
    L + 1      FinalNormPipe       the model's RMSNorm
    L + 2      the LM head         tied: EmbeddingPipe.project (DeepSpeed TiedLayerSpec); untied: OutputPipe

PP > 1: DeepSpeed's PipelineModule over these specs (stages from the '|' marks of the layer pattern, else even).
PP = 1: `SequentialLM`, the same layers in a plain module (DeepSpeed refuses ZeRO-2 with a PipelineModule).
Layers are seeded per index (seed + index) in both, so any TP/PP layout starts from the same weights; megatron-core
sees every layer as a stand-alone layer of a PP = 1 model (DeepSpeed does the pipelining).

Names: `pipe_key_to_gpt_name` maps (layer index, key inside the layer) to BasedModel (GPTModel) parameter names.
"""

import dataclasses

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.spec_utils import build_module

from based_megatron.model.layer_specs import layer_spec
from based_megatron.model.norms import RMSNorm
from based_megatron.training.distributed import seed_layer


def layer_config(config):
    """The config megatron-core layers are built with: pipelining is DeepSpeed's, so megatron sees PP = 1."""
    return dataclasses.replace(config, pipeline_model_parallel_size=1, pipeline_model_parallel_layout=None,
                               layer_pattern=config.layer_symbols)


def uses_rotary(config):
    return any(symbol in config.layer_symbols for symbol in "SA")


class EmbeddingPipe(torch.nn.Module):
    """tokens [b, s] -> hidden [s, b, h]; `project` is the (tied) output layer: hidden -> vocab-parallel logits."""

    def __init__(self, config, tied):
        super().__init__()
        self.embedding = LanguageModelEmbedding(config, vocab_size=config.padded_vocab_size,
                                                max_sequence_length=config.seq_length,
                                                position_embedding_type="rope" if uses_rotary(config) else "none")
        self.output_layer = _output_layer(config, skip_weight=True) if tied else None

    def forward(self, tokens):
        return self.embedding(input_ids=tokens, position_ids=None)

    def project(self, hidden):
        logits, _ = self.output_layer(hidden, weight=self.embedding.word_embeddings.weight)
        return logits


def _output_layer(config, skip_weight):
    # as GPTModel builds it (parallel_output=True: logits stay split over the vocabulary)
    return tensor_parallel.ColumnParallelLinear(config.hidden_size, config.padded_vocab_size, config=config,
                                                init_method=config.init_method, bias=False, skip_bias_add=False,
                                                gather_output=False, skip_weight_param_allocation=skip_weight)


def tied_head_forward(embedding_pipe, hidden):
    return embedding_pipe.project(hidden)


class OutputPipe(torch.nn.Module):
    """Untied LM head: hidden [s, b, h] -> vocab-parallel logits."""

    def __init__(self, config):
        super().__init__()
        self.output_layer = _output_layer(config, skip_weight=False)

    def forward(self, hidden):
        logits, _ = self.output_layer(hidden)
        return logits


class TransformerLayerPipe(torch.nn.Module):
    """One megatron-core TransformerLayer of the Based pattern; S/A layers get GPTModel's rotary embedding.

    recompute: keep only the layer's input and recompute the layer in backward (megatron-core's checkpoint, which
    restores the model-parallel RNG states, so dropout masks match)."""

    def __init__(self, config, layer_id, recompute=False):
        super().__init__()
        self.recompute = recompute
        symbol = config.layer_symbols[layer_id]
        self.layer = build_module(layer_spec(symbol), config=config, layer_number=layer_id + 1)
        self.rotary = None
        if symbol in "SA":
            self.rotary = RotaryEmbedding(kv_channels=config.kv_channels_or_default, rotary_percent=1.0,
                                          rotary_base=config.rotary_base,
                                          use_cpu_initialization=config.use_cpu_initialization)
        self.sequence_parallel = config.sequence_parallel

    def forward(self, hidden):
        if self.recompute and torch.is_grad_enabled():
            return tensor_parallel.checkpoint(self._forward, False, hidden)
        return self._forward(hidden)

    def _forward(self, hidden):
        rotary_pos_emb = None
        if self.rotary is not None:
            seq_len = hidden.size(0)
            if self.sequence_parallel:
                seq_len *= parallel_state.get_tensor_model_parallel_world_size()
            rotary_pos_emb = self.rotary(seq_len)
        hidden, _ = self.layer(hidden, attention_mask=None, rotary_pos_emb=rotary_pos_emb)
        return hidden


class FinalNormPipe(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = RMSNorm(config, config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden):
        return self.norm(hidden)


def language_model_loss(logits, labels_and_mask):
    """Mean cross entropy over the tokens with loss_mask 1 (GPTModel.compute_language_model_loss + masking)."""
    labels, loss_mask = labels_and_mask
    token_loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.transpose(0, 1).contiguous())
    token_loss = token_loss.transpose(0, 1).float()
    loss_mask = loss_mask.float()
    return (token_loss * loss_mask).sum() / loss_mask.sum()


# ----------------------------------------------------------------------------------------------------------------
# names


def pipe_key_to_gpt_name(layer_idx, key, num_layers):
    """(pipe layer index, key in that layer's state dict) -> GPTModel parameter name; None for non-weights."""
    if key.startswith("rotary.") or key.endswith("._extra_state"):
        return None
    if layer_idx == 0:
        return key                                          # embedding.word_embeddings.weight
    if layer_idx <= num_layers:
        return f"decoder.layers.{layer_idx - 1}." + key[len("layer."):]
    if layer_idx == num_layers + 1:
        return "decoder.final_layernorm." + key[len("norm."):]
    return key                                              # output_layer.weight (untied)


def is_gated_fc1(name):
    """SwiGLU's fc1 ([gate; value] rows): each TP rank holds [gate shard; value shard], not a contiguous slice."""
    return ".mlp.linear_fc1." in name


def merge_tensor_parallel(name, shards, dim):
    """Full tensor from the TP shards of parameter `name` (split along `dim`)."""
    if is_gated_fc1(name):
        halves = [shard.chunk(2, dim=dim) for shard in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
    return torch.cat(shards, dim=dim)


def split_tensor_parallel(name, full, dim, tp_size, tp_rank):
    """This TP rank's shard of the full tensor of parameter `name` (inverse of merge_tensor_parallel)."""
    if is_gated_fc1(name):
        return torch.cat([half.chunk(tp_size, dim=dim)[tp_rank] for half in full.chunk(2, dim=dim)], dim=dim)
    return full.chunk(tp_size, dim=dim)[tp_rank]


# ----------------------------------------------------------------------------------------------------------------
# building


def stage_sizes(config, pp):
    """Transformer layers per pipeline stage: the pattern's '|' marks, else an even split."""
    stages = config.pipeline_stages
    if len(stages) > 1:
        return [len(stage) for stage in stages]
    return [config.num_layers // pp] * pp


def layer_specs(config, recompute=False):
    """DeepSpeed LayerSpecs for the layer list in the module docstring."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    tied = config.share_embeddings_and_output_weights
    if tied:
        embedding = TiedLayerSpec("embedding", EmbeddingPipe, config, True,
                                  tied_weight_attr=["embedding.word_embeddings.weight"])
        head = TiedLayerSpec("embedding", EmbeddingPipe, config, True, forward_fn=tied_head_forward,
                             tied_weight_attr=["embedding.word_embeddings.weight"])
    else:
        embedding = LayerSpec(EmbeddingPipe, config, False)
        head = LayerSpec(OutputPipe, config)
    return ([embedding] + [LayerSpec(TransformerLayerPipe, config, i, recompute) for i in range(config.num_layers)]
            + [LayerSpec(FinalNormPipe, config), head])


def build_pipeline_module(config, pp, seed, recompute=False):
    from deepspeed.pipe import PipelineModule

    from based_megatron.training.distributed import pipeline_topology

    class BasedPipelineModule(PipelineModule):
        def _partition_layers(self, method="uniform"):
            # stage s holds transformer layers of stage_sizes[s]; the embedding goes first, norm and head last
            bounds, total = [0], 1
            for size in stage_sizes(config, pp)[:-1]:
                total += size
                bounds.append(total)
            bounds.append(len(self._layer_specs))
            self.parts = bounds
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=bounds[stage], stop=bounds[stage + 1])

    return BasedPipelineModule(layers=layer_specs(config, recompute), topology=pipeline_topology(),
                               loss_fn=language_model_loss, seed_layers=True, seed_fn=seed_layer, base_seed=seed,
                               partition_method="uniform")


class SequentialLM(torch.nn.Module):
    """PP = 1: the pipeline layers in order in one module; state dict keys `<layer index>.<key in layer>`."""

    def __init__(self, config, seed, recompute=False):
        super().__init__()
        self.tied = config.share_embeddings_and_output_weights
        for index, spec in enumerate(layer_specs(config, recompute)):
            if self.tied and index == config.num_layers + 2:
                break  # the tied head is layer 0's `project`
            seed_layer(seed + index)
            self.add_module(str(index), spec.build())

    def forward(self, tokens, labels, loss_mask):
        layers = list(self.children())
        hidden = tokens
        for layer in layers:
            hidden = layer(hidden)
        logits = layers[0].project(hidden) if self.tied else hidden
        return language_model_loss(logits, (labels, loss_mask))


def register_sequence_parallel_grad_allreduce(module):
    """Sum the gradients of `sequence_parallel` weights (the norms) over the TP group, as Megatron's
    finalize_model_grads does: under SP each TP rank sees a slice of the sequence, so each holds a partial gradient.

    A tensor hook runs before the gradient is accumulated, so DeepSpeed's data-parallel reduction sees the sum."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return
    group = parallel_state.get_tensor_model_parallel_group()

    def all_reduce(grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=group)
        return grad

    for param in module.parameters():
        if getattr(param, "sequence_parallel", False):
            param.register_hook(all_reduce)


def local_layers(module):
    """{pipe layer index: module} of the layers this rank holds (both module kinds). The tied embedding counts as
    layer 0 on every stage holding a copy (the first stage and, for the tied head, the last)."""
    from deepspeed.pipe import PipelineModule

    if isinstance(module, PipelineModule):
        layers = {int(name): child for name, child in module.named_children() if name.isdigit()}
        layers.update({0: tied for tied in module.tied_modules.values()})
        return layers
    return {int(name): child for name, child in module.named_children()}


def tensor_parallel_split_dims(module, num_layers):
    """{GPT name: TP split dim} of this rank's parameters that megatron-core marks tensor-parallel."""
    dims = {}
    for layer_idx, layer in local_layers(module).items():
        for key, param in layer.named_parameters():
            name = pipe_key_to_gpt_name(layer_idx, key, num_layers)
            if name is not None and getattr(param, "tensor_model_parallel", False):
                dims[name] = int(param.partition_dim)
    return dims
