"""Hugging Face side of based_megatron: the Based HF model (configuration_based.py, modeling_based.py, both
self-contained and copied into every export), the weight/config mapping to and from training checkpoints
(convert.py) and the export check (verify.py).

`register_auto_classes()` registers the Based classes with AutoConfig / AutoModelForCausalLM, so exports load
without `trust_remote_code`; `import based_megatron` calls it.
"""


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from .configuration_based import BasedConfig
    from .modeling_based import BasedForCausalLM

    AutoConfig.register(BasedConfig.model_type, BasedConfig, exist_ok=True)
    AutoModelForCausalLM.register(BasedConfig, BasedForCausalLM, exist_ok=True)


__all__ = ["register_auto_classes"]
