"""based_megatron: Based (linear attention + sliding window + short conv) language models on megatron-core.

Kept light: import the submodules you need (based_megatron.config, based_megatron.model, ...)."""

__version__ = "0.1.0"
