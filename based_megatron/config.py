"""Model configuration: ``BasedConfig`` (a megatron-core ``TransformerConfig``), presets, validation, CLI flags.

A model is described by a **layer pattern**, one symbol per layer:

    C  BaseConv (gated short convolution)
    L  linear attention with the 2nd-order Taylor feature map
    S  sliding-window softmax attention (rotary)
    A  full causal softmax attention (megatron-core SelfAttention, rotary)

An optional ``|`` marks pipeline-stage boundaries (``"CCLS|CCSA"``); without it the layers are split evenly.
Every block is pre-norm: ``h = h + mixer(RMSNorm(h)); h = h + SwiGLU(RMSNorm(h))``.

Validation runs in ``__post_init__`` (before any weight exists) and raises ``ConfigError`` naming the field,
its value and the rule broken. It covers the parallel layout too (tensor_model_parallel_size,
pipeline_model_parallel_size, sequence_parallel are megatron-core config fields).
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

MIXER_SYMBOLS = {
    "C": "BaseConv",
    "L": "Taylor linear attention",
    "S": "sliding-window attention",
    "A": "full causal attention",
}
STAGE_SEPARATOR = "|"
# The fused linear-attention kernels hold phi(k) (1 + F + F^2 features) in on-chip tiles sized for F <= 16.
MAX_LA_FEATURE_DIM = 16


class ConfigError(ValueError):
    """A model configuration value breaks a rule; the message names field, value and rule."""

    def __init__(self, field: str, value: Any, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{field}={value!r}: {rule}")


def parse_layer_pattern(pattern: str) -> List[str]:
    """Pattern string -> list of pipeline stages, each a string of mixer symbols (whitespace ignored)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError("layer_pattern", pattern, f"must be a non-empty string of symbols {''.join(MIXER_SYMBOLS)}")
    compact = "".join(pattern.split())
    for position, symbol in enumerate(compact):
        if symbol not in MIXER_SYMBOLS and symbol != STAGE_SEPARATOR:
            known = ", ".join(f"{s} ({name})" for s, name in MIXER_SYMBOLS.items())
            raise ConfigError(
                "layer_pattern", pattern,
                f"unknown symbol {symbol!r} at position {position}; known symbols: {known}, "
                f"and {STAGE_SEPARATOR!r} between pipeline stages",
            )
    stages = compact.split(STAGE_SEPARATOR)
    if any(not stage for stage in stages):
        raise ConfigError("layer_pattern", pattern, f"every pipeline stage between {STAGE_SEPARATOR!r} needs a layer")
    return stages


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass
class BasedConfig(TransformerConfig):
    """megatron-core TransformerConfig plus the Based layer pattern and mixer hyper-parameters."""

    # --- Based fields ---------------------------------------------------------------------------------
    layer_pattern: str = ""
    """One symbol per layer (C/L/S/A), optional '|' between pipeline stages."""
    vocab_size: int = 50257
    """Tokenizer vocabulary; the embedding is padded (see padded_vocab_size)."""
    make_vocab_size_divisible_by: int = 8
    """The padded vocabulary is the smallest multiple of this that the tensor-parallel size also divides."""
    seq_length: int = 2048
    la_num_heads: int = 16
    la_feature_dim: int = 16
    """Taylor feature map input size F: phi has 1 + F + F^2 features."""
    la_eps: float = 1e-12
    """Added to the linear-attention normaliser."""
    swa_num_heads: int = 16
    swa_window: int = 128
    """Sliding-window look-back: token i attends to keys i - swa_window ... i."""
    conv_kernel_size: int = 3
    conv_expansion: int = 2
    """BaseConv inner width = conv_expansion * hidden_size."""
    rotary_base: int = 10000
    ffn_multiple_of: int = 256
    """When ffn_hidden_size is not given it is 2 * hidden_size rounded up to this multiple."""
    share_embeddings_and_output_weights: bool = True
    init_method_std: Optional[float] = None
    """Normal init std; None means sqrt(2 / (5 * hidden_size)). Output projections get / sqrt(2 * num_layers)."""

    # --- megatron-core fields with Based defaults -----------------------------------------------------------
    normalization: str = "RMSNorm"
    layernorm_epsilon: float = 1e-5
    gated_linear_unit: bool = True
    activation_func: Callable = F.silu
    add_bias_linear: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    fp32_residual_connection: bool = True
    transformer_impl: str = "local"
    use_cpu_initialization: bool = True
    """Full weights are drawn then sliced, so every TP layout starts from the same numbers."""
    hetereogenous_dist_checkpoint: bool = True
    """megatron-core's (sic) switch that lets dist_checkpointing save blocks of mixed layer types."""

    def __post_init__(self):
        self._derive_defaults()
        self.validate()
        super().__post_init__()

    # --- derived values ---------------------------------------------------------------------------------
    def _derive_defaults(self):
        stages = parse_layer_pattern(self.layer_pattern)
        pattern_layers = sum(len(stage) for stage in stages)
        if not self.num_layers:
            self.num_layers = pattern_layers
        if self.num_layers != pattern_layers:
            raise ConfigError(
                "num_layers", self.num_layers,
                f"must equal the number of symbols in layer_pattern {self.layer_pattern!r} ({pattern_layers}); "
                "override --layer-pattern together with --num-layers",
            )
        if self.hidden_size <= 0:
            raise ConfigError("hidden_size", self.hidden_size, "must be a positive integer")
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = round_up(2 * self.hidden_size, self.ffn_multiple_of)
        if self.init_method_std is None:
            self.init_method_std = math.sqrt(2.0 / (5.0 * self.hidden_size))  # sqrt(2 / 5d)
        if self.num_attention_heads == 0:
            self.num_attention_heads = self.swa_num_heads
        if self.pipeline_dtype is None:
            # p2p sends the residual stream, which is fp32 with fp32_residual_connection
            self.pipeline_dtype = torch.float32 if self.fp32_residual_connection else self.params_dtype
        if len(stages) > 1 and self.pipeline_model_parallel_size > 1 and self.pipeline_model_parallel_layout is None:
            self.pipeline_model_parallel_layout = self._pipeline_layout(stages)

    @staticmethod
    def _pipeline_layout(stages: List[str]) -> List[List[str]]:
        layout = [["decoder"] * len(stage) for stage in stages]
        layout[0].insert(0, "embedding")
        layout[-1].append("loss")
        return layout

    @property
    def layer_symbols(self) -> str:
        """The pattern without separators: symbol of global layer i (0-based) is layer_symbols[i]."""
        return "".join(parse_layer_pattern(self.layer_pattern))

    @property
    def pipeline_stages(self) -> List[str]:
        return parse_layer_pattern(self.layer_pattern)

    @property
    def padded_vocab_size(self) -> int:
        """vocab_size rounded up to a multiple of lcm(make_vocab_size_divisible_by, TP).

        Megatron-LM pads to a multiple of divisible_by * TP instead; that makes the embedding shape (and the loss:
        padded logits are in the softmax) depend on TP, so checkpoints could not reshard across TP sizes. With
        the default 8 and TP a power of two up to 8 the padded size is the same in every layout (GPT-2: 50264)."""
        return round_up(self.vocab_size, math.lcm(self.make_vocab_size_divisible_by, self.tensor_model_parallel_size))

    @property
    def la_head_dim(self) -> int:
        return self.hidden_size // self.la_num_heads

    @property
    def swa_head_dim(self) -> int:
        return self.hidden_size // self.swa_num_heads

    @property
    def conv_channels(self) -> int:
        return self.conv_expansion * self.hidden_size

    # --- validation -------------------------------------------------------------------------------------
    def validate(self):
        """Raise ConfigError for the first rule broken (pattern, sizes, heads vs TP, stages vs PP, vocab, window)."""
        tp, pp = self.tensor_model_parallel_size, self.pipeline_model_parallel_size
        symbols = self.layer_symbols
        self._validate_positive(["vocab_size", "make_vocab_size_divisible_by", "seq_length", "ffn_hidden_size",
                                 "tensor_model_parallel_size", "pipeline_model_parallel_size"])
        if self.layernorm_epsilon <= 0:
            raise ConfigError("layernorm_epsilon", self.layernorm_epsilon, "must be > 0")
        if self.ffn_hidden_size % tp:
            raise ConfigError("ffn_hidden_size", self.ffn_hidden_size,
                              f"must be divisible by tensor_model_parallel_size ({tp})")
        self._validate_heads("num_attention_heads", self.num_attention_heads, tp)
        if "C" in symbols:  # TP divides the heads, which divide hidden_size, so it divides the conv channels
            self._validate_positive(["conv_kernel_size", "conv_expansion"])
        if "L" in symbols:
            self._validate_heads("la_num_heads", self.la_num_heads, tp)
            if not 1 <= self.la_feature_dim <= MAX_LA_FEATURE_DIM:
                raise ConfigError("la_feature_dim", self.la_feature_dim,
                                  f"must be between 1 and {MAX_LA_FEATURE_DIM} (the fused linear-attention kernels "
                                  f"support feature dims up to {MAX_LA_FEATURE_DIM})")
            if self.la_eps < 0:
                raise ConfigError("la_eps", self.la_eps, "must be >= 0")
        if "S" in symbols:
            self._validate_heads("swa_num_heads", self.swa_num_heads, tp)
            if self.swa_window < 1:
                raise ConfigError("swa_window", self.swa_window, "the look-back must be >= 1 token")
            if self.swa_window >= self.seq_length:
                raise ConfigError("swa_window", self.swa_window,
                                  f"must be smaller than seq_length ({self.seq_length}); a window covering the whole "
                                  "sequence is full attention: use symbol 'A'")
            if self.swa_head_dim != self.kv_channels_or_default:
                raise ConfigError("swa_num_heads", self.swa_num_heads,
                                  f"sliding-window head dim hidden_size / swa_num_heads = {self.swa_head_dim} must "
                                  f"equal the rotary dim kv_channels = {self.kv_channels_or_default} (hidden_size / "
                                  "num_attention_heads): all rotary layers share one embedding")
        if ("S" in symbols or "A" in symbols) and self.kv_channels_or_default % 2:
            raise ConfigError("kv_channels", self.kv_channels_or_default, "rotary embeddings need an even head dim")
        if self.sequence_parallel and tp == 1:
            raise ConfigError("sequence_parallel", True, "needs tensor_model_parallel_size > 1")
        if self.sequence_parallel and self.seq_length % tp:
            raise ConfigError("seq_length", self.seq_length,
                              f"must be divisible by tensor_model_parallel_size ({tp}) with sequence_parallel")
        self._validate_pipeline_split(pp)

    @property
    def kv_channels_or_default(self) -> int:
        return self.kv_channels if self.kv_channels is not None else self.hidden_size // self.num_attention_heads

    def _validate_positive(self, names: List[str]):
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(name, value, "must be a positive integer")

    def _validate_heads(self, name: str, heads: int, tp: int):
        if heads < 1 or self.hidden_size % heads:
            raise ConfigError(name, heads, f"must be a positive divisor of hidden_size ({self.hidden_size})")
        if heads % tp:
            raise ConfigError(name, heads, f"must be divisible by tensor_model_parallel_size ({tp}): TP splits heads")

    def _validate_pipeline_split(self, pp: int):
        stages = self.pipeline_stages
        if len(stages) > 1:
            if pp > 1 and len(stages) != pp:
                raise ConfigError("layer_pattern", self.layer_pattern,
                                  f"has {len(stages)} pipeline stages separated by {STAGE_SEPARATOR!r} but "
                                  f"pipeline_model_parallel_size is {pp}")
        elif self.num_layers % pp:
            raise ConfigError("num_layers", self.num_layers,
                              f"cannot be split evenly into pipeline_model_parallel_size={pp} stages; "
                              f"mark the stages with {STAGE_SEPARATOR!r} in layer_pattern for an uneven split")


# ----------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------

def based_pattern(num_layers: int, linear_attention_layers: List[int], sliding_window_layers: List[int]) -> str:
    """Pattern with L at the given 0-based layers, S at the others given, C everywhere else."""
    symbols = ["C"] * num_layers
    for i in linear_attention_layers:
        symbols[i] = "L"
    for i in sliding_window_layers:
        symbols[i] = "S"
    return "".join(symbols)


_BASED_360M_PATTERN = based_pattern(27, [1, 6, 11, 16, 21], [2, 7, 12, 17, 22])
_BASED_1B_PATTERN = based_pattern(36, [1, 6, 11, 16, 21, 27, 33], [2, 7, 12, 17, 22, 28, 34])

PRESETS: Dict[str, Dict[str, Any]] = {
    "based-360m": dict(hidden_size=1024, layer_pattern=_BASED_360M_PATTERN, num_attention_heads=16,
                       la_num_heads=16, la_feature_dim=16, swa_num_heads=16, swa_window=128, vocab_size=50257),
    "based-1.3b": dict(hidden_size=1792, layer_pattern=_BASED_1B_PATTERN, num_attention_heads=16,
                       la_num_heads=16, la_feature_dim=16, swa_num_heads=16, swa_window=128, vocab_size=50257),
    "transformer-360m": dict(hidden_size=1024, layer_pattern="A" * 27, num_attention_heads=16,
                             swa_num_heads=16, vocab_size=50257),
    "transformer-1.3b": dict(hidden_size=1792, layer_pattern="A" * 36, num_attention_heads=16,
                             swa_num_heads=16, vocab_size=50257),
    # Every mixer kind, byte-level vocabulary, trains in seconds on a CPU.
    "based-tiny": dict(hidden_size=64, layer_pattern="CLSA", num_attention_heads=4, la_num_heads=4,
                       la_feature_dim=16, swa_num_heads=4, swa_window=16, ffn_multiple_of=64, vocab_size=260,
                       seq_length=128),
}


def build_config(preset: str, **overrides) -> BasedConfig:
    """BasedConfig from a preset name plus field overrides (model and megatron-core fields, e.g. parallel sizes)."""
    if preset not in PRESETS:
        raise ConfigError("preset", preset, f"unknown preset; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(BasedConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(unknown[0], overrides[unknown[0]], "is not a BasedConfig field")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if "num_layers" in overrides and "layer_pattern" not in overrides:
        raise ConfigError("num_layers", overrides["num_layers"],
                          f"preset {preset!r} fixes the layer pattern; override layer_pattern too")
    return BasedConfig(**values)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

# field -> flag; Megatron-LM's flag names where Megatron has the setting.
MODEL_FLAGS: Dict[str, str] = {
    "hidden_size": "--hidden-size",
    "num_layers": "--num-layers",
    "layer_pattern": "--layer-pattern",
    "ffn_hidden_size": "--ffn-hidden-size",
    "ffn_multiple_of": "--ffn-multiple-of",
    "num_attention_heads": "--num-attention-heads",
    "vocab_size": "--vocab-size",
    "make_vocab_size_divisible_by": "--make-vocab-size-divisible-by",
    "seq_length": "--seq-length",
    "la_num_heads": "--la-num-heads",
    "la_feature_dim": "--la-feature-dim",
    "la_eps": "--la-eps",
    "swa_num_heads": "--swa-num-heads",
    "swa_window": "--swa-window",
    "conv_kernel_size": "--conv-kernel-size",
    "conv_expansion": "--conv-expansion",
    "rotary_base": "--rotary-base",
    "init_method_std": "--init-method-std",
    "layernorm_epsilon": "--norm-epsilon",
    "fp32_residual_connection": "--fp32-residual-connection",
    "share_embeddings_and_output_weights": "--share-embeddings-and-output-weights",
}
_FLAG_TYPES = {"layer_pattern": str, "la_eps": float, "init_method_std": float, "layernorm_epsilon": float}
_BOOL_FIELDS = {"fp32_residual_connection", "share_embeddings_and_output_weights"}


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--model PRESET`` and one flag per overridable model field (default None: keep the preset's)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="based-360m", choices=sorted(PRESETS), help="model preset")
    docs = {f.name: f for f in dataclasses.fields(BasedConfig)}
    for field, flag in MODEL_FLAGS.items():
        dest = f"model_{field}"
        if field in _BOOL_FIELDS:
            group.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction,
                               help=f"override {field}")
        else:
            group.add_argument(flag, dest=dest, default=None, type=_FLAG_TYPES.get(field, int),
                               help=f"override {field} (default {docs[field].default!r} unless the preset sets it)")
    return parser


def model_overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The model fields given on the command line (flags left at None are not overrides)."""
    overrides = {field: getattr(args, f"model_{field}") for field in MODEL_FLAGS}
    return {field: value for field, value in overrides.items() if value is not None}


def config_from_args(args: argparse.Namespace, **megatron_fields) -> BasedConfig:
    """BasedConfig from parsed ``add_model_args`` flags plus e.g. tensor_model_parallel_size=..., bf16=..."""
    return build_config(args.model, **model_overrides_from_args(args), **megatron_fields)
