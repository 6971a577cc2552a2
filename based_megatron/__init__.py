"""based_megatron: Based (linear attention + sliding window + short conv) language models on megatron-core.

Import the submodules you need (based_megatron.config, based_megatron.model, ...). Importing the package registers
the Based Hugging Face classes with transformers' Auto classes, so exported models load without trust_remote_code;
the registration is lazy (based_megatron.hf.register_when_imported), so the package import itself loads neither
torch nor transformers."""

from .hf import register_when_imported

__version__ = "0.1.0"

register_when_imported()
