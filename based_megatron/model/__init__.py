"""The Based LM as megatron-core modules."""

from .based_model import BasedModel, build_model
from .layer_specs import block_spec, layer_spec

__all__ = ["BasedModel", "block_spec", "build_model", "layer_spec"]
