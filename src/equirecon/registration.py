"""Auto-class registration: in-library (AutoModel & co. resolve `model_type="equirecon"` once `equirecon` is
imported) and for Hub custom code (every `save_pretrained` directory carries `auto_map` and the modeling files)."""

import importlib

import transformers

from .modeling import EquiReconConfig
from .modeling.configuration_equirecon import AUTO_MAP


def _auto_classes() -> dict[str, tuple[type, type]]:
    """`{auto class name: (auto class, EquiRecon class)}` for the model classes of `AUTO_MAP`, the one list of the
    Auto classes that resolve to EquiRecon (its Hub custom code references them as "module.Class")."""
    classes = {}
    for auto_name, reference in AUTO_MAP.items():
        module_name, class_name = reference.split(".")
        if auto_name != "AutoConfig":
            module = importlib.import_module(f".modeling.{module_name}", __package__)
            classes[auto_name] = (getattr(transformers, auto_name), getattr(module, class_name))
    return classes


AUTO_CLASSES = _auto_classes()


def register_auto_classes() -> None:
    """Idempotent: safe to call on every import."""
    transformers.AutoConfig.register(EquiReconConfig.model_type, EquiReconConfig, exist_ok=True)
    EquiReconConfig.register_for_auto_class()
    for auto_name, (auto_class, model_class) in AUTO_CLASSES.items():
        auto_class.register(EquiReconConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)
