"""Hugging Face side of based_megatron: the Based HF model (configuration_based.py, modeling_based.py, both
self-contained and copied into every export), the weight/config mapping to and from training checkpoints
(convert.py) and the export check (verify.py).

Importing this package is cheap. `register_auto_classes()` imports transformers and registers the Based classes
with AutoConfig / AutoModelForCausalLM, so exports load without `trust_remote_code`;
`register_auto_classes_on_import()` does the same but defers it until the program imports transformers (so
`import based_megatron` does not pay for importing transformers).
"""

import importlib.abc
import importlib.util
import sys


def register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from .configuration_based import BasedConfig
    from .modeling_based import BasedForCausalLM

    AutoConfig.register(BasedConfig.model_type, BasedConfig, exist_ok=True)
    AutoModelForCausalLM.register(BasedConfig, BasedForCausalLM, exist_ok=True)


class _RegisterWhenTransformersIsImported(importlib.abc.MetaPathFinder):
    """Import hook: lets `transformers` load normally, then calls register_auto_classes() once."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_then_register(module):
            load(module)
            register_auto_classes()

        spec.loader.exec_module = exec_then_register
        return spec


def register_auto_classes_on_import() -> None:
    if "transformers" in sys.modules:
        register_auto_classes()
    elif not any(isinstance(finder, _RegisterWhenTransformersIsImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenTransformersIsImported())


__all__ = ["register_auto_classes", "register_auto_classes_on_import"]
