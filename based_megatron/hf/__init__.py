"""Hugging Face side of based_megatron: the Based HF model (configuration_based.py, modeling_based.py, both
self-contained and copied into every export), the weight/config mapping to and from training checkpoints
(convert.py) and the export check (verify.py).

`register_auto_classes()` registers the Based classes with AutoConfig / AutoModelForCausalLM, so exports load
without `trust_remote_code`. `import based_megatron` does it lazily (`register_when_imported`): the package import
stays light (no torch, no transformers) for processes that never use them, such as the workers of
tools/preprocess_data.py; the classes are registered as soon as transformers' auto modules are imported.
"""

import importlib.abc
import importlib.util
import sys
from typing import Callable

_CONFIGURATION_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"


def register_auto_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .configuration_based import BasedConfig

    AutoConfig.register(BasedConfig.model_type, BasedConfig, exist_ok=True)


def register_auto_model() -> None:
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    from .configuration_based import BasedConfig
    from .modeling_based import BasedForCausalLM

    AutoModelForCausalLM.register(BasedConfig, BasedForCausalLM, exist_ok=True)


def register_auto_classes() -> None:
    register_auto_config()
    register_auto_model()


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Finds module `name` with the regular finders and calls `callback` right after the module has executed."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.callback()

        spec.loader.exec_module = exec_module
        return spec


def _run_when_imported(name: str, callback: Callable[[], None]) -> None:
    if name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _RunAfterImport(name, callback))


def register_when_imported() -> None:
    """Register the Auto classes now if transformers' auto modules are loaded, else right after they load."""
    _run_when_imported(_CONFIGURATION_AUTO, register_auto_config)
    _run_when_imported(_MODELING_AUTO, register_auto_model)


__all__ = ["register_auto_classes", "register_auto_config", "register_auto_model", "register_when_imported"]
