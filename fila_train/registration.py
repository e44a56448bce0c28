"""fila's classes in transformers' Auto registries (model_type "fila"), with no remote code.

``import fila_train`` must stay cheap: the preflight and ``fila-train --help`` answer in about a second, and
torch + transformers + the model take 10-20 s to import. Yet ``import fila_train`` followed by
``AutoProcessor.from_pretrained(folder)`` must work. So the registration runs as soon as transformers is
there: at ``import fila_train`` if it already is, else right after transformers' first import, through an
import hook that removes itself once it has registered.
"""
from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

PACKAGE = __name__.rpartition(".")[0]


def register_with_transformers() -> None:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    from .model.configuration import FilaConfig
    from .model.modeling import FilaForConditionalGeneration
    from .processing.image_processing import FilaImageProcessor
    from .processing.processor import FilaProcessor

    AutoConfig.register(FilaConfig.model_type, FilaConfig, exist_ok=True)
    AutoModelForImageTextToText.register(FilaConfig, FilaForConditionalGeneration, exist_ok=True)

    # One class for both backends: it has no torchvision path, and asking for one must not fall back noisily.
    backends = {"pil": FilaImageProcessor, "torchvision": FilaImageProcessor}
    AutoImageProcessor.register(FilaConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(FilaConfig, FilaProcessor, exist_ok=True)


def _initializing(module: ModuleType | None) -> bool:
    """Whether ``module`` is still executing its body (importlib marks its spec while it does)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class RegisterOnceTransformersLoads(MetaPathFinder):
    """Wraps the loaders of transformers and of this package's modules. After each has run, it registers
    if transformers is loaded and none of this package's modules is half-imported: registering imports
    the model and processor modules, which a half-imported module of ours may be on the way to."""

    def find_spec(self, name: str, path=None, target=None) -> ModuleSpec | None:
        if name != "transformers" and not name.startswith(f"{PACKAGE}."):
            return None
        spec = self._spec_from_other_finders(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def execute_then_register(module: ModuleType) -> None:
            execute(module)
            self.register_if_ready(just_run=module)

        spec.loader.exec_module = execute_then_register
        return spec

    def _spec_from_other_finders(self, name: str, path, target) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None:
                spec = find(name, path, target)
                if spec is not None:
                    return spec
        return None

    def register_if_ready(self, just_run: ModuleType) -> None:
        # By name: transformers replaces its own sys.modules entry with a lazy module while it runs.
        transformers = sys.modules.get("transformers")
        if transformers is None or (just_run.__name__ != "transformers" and _initializing(transformers)):
            return
        busy = [name for name, module in list(sys.modules.items())
                if (name == PACKAGE or name.startswith(f"{PACKAGE}.")) and name != just_run.__name__
                and _initializing(module)]
        if busy or self not in sys.meta_path:
            return
        sys.meta_path.remove(self)
        register_with_transformers()


def register_when_transformers_loads() -> None:
    if "transformers" in sys.modules:
        register_with_transformers()
    elif not any(isinstance(finder, RegisterOnceTransformersLoads) for finder in sys.meta_path):
        sys.meta_path.insert(0, RegisterOnceTransformersLoads())
