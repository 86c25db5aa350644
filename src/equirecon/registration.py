"""Auto-class registration: in-library (AutoModel & co. resolve `model_type="equirecon"` once `equirecon` is
imported) and for Hub custom code (every `save_pretrained` directory carries `auto_map` and the modeling files)."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
)

from .modeling import (
    EquiReconBackbone,
    EquiReconConfig,
    EquiReconForImageClassification,
    EquiReconForPreTraining,
    EquiReconForSemanticSegmentation,
    EquiReconModel,
)

AUTO_CLASSES = {
    "AutoModel": (AutoModel, EquiReconModel),
    "AutoBackbone": (AutoBackbone, EquiReconBackbone),
    "AutoModelForPreTraining": (AutoModelForPreTraining, EquiReconForPreTraining),
    "AutoModelForImageClassification": (AutoModelForImageClassification, EquiReconForImageClassification),
    "AutoModelForSemanticSegmentation": (AutoModelForSemanticSegmentation, EquiReconForSemanticSegmentation),
}


def register_auto_classes() -> None:
    """Idempotent: safe to call on every import."""
    AutoConfig.register(EquiReconConfig.model_type, EquiReconConfig, exist_ok=True)
    EquiReconConfig.register_for_auto_class()
    for auto_name, (auto_class, model_class) in AUTO_CLASSES.items():
        auto_class.register(EquiReconConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)
