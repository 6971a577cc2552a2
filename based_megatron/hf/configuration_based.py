"""Hugging Face configuration of the Based language model.

Self-contained: this file is copied into every exported model directory and loaded with
`trust_remote_code=True`, so it imports nothing from `based_megatron`.

The fields mirror the GPT2Config-style `config.json` of the released HazyResearch checkpoints
(hazyresearch/based-360m, based-1b): `n_embd`, `n_layer`, `n_inner`, `alt_mixer_layers`
(linear attention), `alt_mixer_2_layers` (sliding-window attention) and the three mixer dicts.
Every other layer is a BaseConv (gated short convolution). A released `config.json` therefore
loads as is.
"""

from transformers import PretrainedConfig

DEFAULT_MIXER = {  # BaseConv: in_proj d -> 4d, causal depthwise conv over the first 2d channels
    "_target_": "based.models.mixers.convolution.BaseConv",
    "expand_proj": 4,
    "kernel_sizes": 3,
    "l_max": 2048,
    "use_bias": True,
    "conv_bias": False,
}
DEFAULT_LINEAR_ATTENTION = {  # Taylor-feature linear attention
    "_target_": "based.models.mixers.linear_attention.LinearAttention",
    "feature_dim": 16,
    "num_heads": 16,
    "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp", "input_dim": 16},
    "eps": 1e-12,
    "l_max": 2048,
}
DEFAULT_SLIDING_WINDOW = {  # softmax attention over the last window_size // 2 tokens (and itself)
    "_target_": "based.models.mixers.slide_attention.SlidingAttention",
    "num_heads": 16,
    "window_size": 256,
    "causal": True,
}

MIXER_BASE_CONV = "base_conv"
MIXER_LINEAR_ATTENTION = "linear_attention"
MIXER_SLIDING_WINDOW = "sliding_window"
MIXER_FULL_ATTENTION = "full_attention"


class BasedConfig(PretrainedConfig):
    r"""Configuration of [`BasedForCausalLM`].

    Main fields (GPT2Config names, as in the released checkpoints):
        vocab_size: tokenizer vocabulary; the embedding has `padded_vocab_size` rows
            (`vocab_size` rounded up to `pad_vocab_size_multiple`), logits are cut back to `vocab_size`.
        n_embd, n_layer, n_inner (SwiGLU hidden size: fc1 is `n_embd -> 2 * n_inner`).
        alt_mixer_layers: 0-based indices of the linear-attention layers (`alt_mixer`).
        alt_mixer_2_layers: 0-based indices of the sliding-window layers (`alt_mixer_2`).
        attn_layers: 0-based indices of full causal attention layers (n_head heads).
        mixer / alt_mixer / alt_mixer_2: the mixer dicts; the keys used here are
            mixer: `expand_proj`, `kernel_sizes`, `use_bias` (in/out projections), `conv_bias`;
            alt_mixer: `feature_dim`, `num_heads`, `feature_map.input_dim`, `eps`;
            alt_mixer_2: `num_heads`, `window_size` (the look-back is `window_size // 2`).
        layer_norm_epsilon: RMSNorm epsilon. rotary_emb_base: RoPE base of the sliding window.
        kernel_backend: "auto" (fused `based_kernels` on CUDA when installed, else plain PyTorch),
            "torch" (always plain PyTorch) or "based_kernels" (always `based_kernels`).
    """

    model_type = "based"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "n_inner",
    }

    vocab_size: int = 50257
    n_embd: int = 1024
    n_layer: int = 27
    n_head: int = 16
    n_inner: int | None = None
    n_positions: int = 0
    pad_vocab_size_multiple: int = 1
    layer_norm_epsilon: float = 1e-5
    rms_norm: bool = True
    residual_in_fp32: bool = True
    activation_function: str = "swiglu"
    mlp_fc1_bias: bool = False
    mlp_fc2_bias: bool = False
    qkv_proj_bias: bool = False
    out_proj_bias: bool = False
    rotary_emb_base: float = 10000.0
    rotary_emb_fraction: float = 1.0
    alt_mixer_layers: list[int] | None = None
    alt_mixer_2_layers: list[int] | None = None
    attn_layers: list[int] | None = None
    mixer: dict | None = None
    alt_mixer: dict | None = None
    alt_mixer_2: dict | None = None
    initializer_range: float = 0.02
    kernel_backend: str = "auto"
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # Released configs misspell the sliding-window list in some versions.
        if self.alt_mixer_2_layers is None and "alt_2_mixer_layers" in kwargs:
            self.alt_mixer_2_layers = kwargs.pop("alt_2_mixer_layers")
        self.alt_mixer_layers = [int(i) for i in (self.alt_mixer_layers or [])]
        self.alt_mixer_2_layers = [int(i) for i in (self.alt_mixer_2_layers or [])]
        self.attn_layers = [int(i) for i in (self.attn_layers or [])]
        self.mixer = {**DEFAULT_MIXER, **(self.mixer or {})}
        self.alt_mixer = {**DEFAULT_LINEAR_ATTENTION, **(self.alt_mixer or {})}
        self.alt_mixer_2 = {**DEFAULT_SLIDING_WINDOW, **(self.alt_mixer_2 or {})}
        if self.n_inner is None:
            self.n_inner = 2 * self.n_embd
        self.validate_based()
        super().__post_init__(**kwargs)

    def validate_based(self):
        """Fail early, naming the field, on values the model cannot be built from."""
        listed = self.alt_mixer_layers + self.alt_mixer_2_layers + self.attn_layers
        twice = sorted({i for i in listed if listed.count(i) > 1})
        if twice:
            raise ValueError(f"BasedConfig: layers {twice} appear more than once in alt_mixer_layers, "
                             "alt_mixer_2_layers and attn_layers")
        outside = [i for i in listed if not 0 <= i < self.n_layer]
        if outside:
            raise ValueError(f"BasedConfig: mixer layer indices {outside} are outside 0..n_layer-1={self.n_layer - 1}")
        if self.activation_function != "swiglu":
            raise ValueError(f"BasedConfig: activation_function must be 'swiglu', got {self.activation_function!r}")
        if not self.rms_norm:
            raise ValueError("BasedConfig: only rms_norm=True is supported")
        if self.rotary_emb_fraction != 1.0:
            raise ValueError(f"BasedConfig: rotary_emb_fraction must be 1.0, got {self.rotary_emb_fraction}")
        if self.mixer["expand_proj"] % 2:
            raise ValueError(f"BasedConfig: mixer.expand_proj must be even, got {self.mixer['expand_proj']}")
        head_counts = (("alt_mixer.num_heads", self.linear_attention_heads),
                       ("alt_mixer_2.num_heads", self.sliding_window_heads), ("n_head", self.n_head))
        for name, heads in head_counts:
            if self.n_embd % heads:
                raise ValueError(f"BasedConfig: n_embd={self.n_embd} is not divisible by {name}={heads}")
        if self.kernel_backend not in ("auto", "torch", "based_kernels"):
            raise ValueError(f"BasedConfig: kernel_backend must be auto|torch|based_kernels, got {self.kernel_backend!r}")

    # Derived sizes, named for the model code.
    @property
    def padded_vocab_size(self) -> int:
        multiple = self.pad_vocab_size_multiple
        return (self.vocab_size + multiple - 1) // multiple * multiple

    @property
    def mixer_types(self) -> list[str]:
        """Mixer kind of every layer: base_conv, linear_attention, sliding_window or full_attention."""
        kinds = [MIXER_BASE_CONV] * self.n_layer
        for kind, layers in ((MIXER_LINEAR_ATTENTION, self.alt_mixer_layers), (MIXER_SLIDING_WINDOW, self.alt_mixer_2_layers),
                             (MIXER_FULL_ATTENTION, self.attn_layers)):
            for i in layers:
                kinds[i] = kind
        return kinds

    @property
    def conv_kernel_size(self) -> int:
        kernel = self.mixer["kernel_sizes"]
        return int(kernel[0] if isinstance(kernel, (list, tuple)) else kernel)

    @property
    def conv_bias(self) -> bool:
        return bool(self.mixer.get("conv_bias", False))

    @property
    def conv_channels(self) -> int:
        return self.mixer["expand_proj"] * self.n_embd // 2

    @property
    def base_conv_bias(self) -> bool:
        return bool(self.mixer.get("use_bias", True))

    @property
    def feature_dim(self) -> int:
        return int(self.alt_mixer["feature_dim"])

    @property
    def feature_map_input_dim(self) -> int:
        feature_map = self.alt_mixer.get("feature_map") or {}
        return int(feature_map.get("input_dim", self.feature_dim))

    @property
    def linear_attention_heads(self) -> int:
        return int(self.alt_mixer["num_heads"])

    @property
    def linear_attention_eps(self) -> float:
        return float(self.alt_mixer.get("eps", 1e-12))

    @property
    def sliding_window_heads(self) -> int:
        return int(self.alt_mixer_2["num_heads"])

    @property
    def sliding_window_lookback(self) -> int:
        """Token i attends to keys i - lookback .. i (the reference module halves `window_size`)."""
        return int(self.alt_mixer_2["window_size"]) // 2


__all__ = ["BasedConfig"]
