"""ltc_fast: label-token text classification, a fast drop-in for the reference method."""

from transformers import AutoConfig, AutoModelForSequenceClassification

from .backend_report import backends
from .batching import LabelTokenCollator, tokenize_texts
from .checkpoints import from_reference_state_dict, to_reference_state_dict
from .config import LtcConfig
from .modeling import AutoModelForTokenSequenceClassification, LabelTokenClassifierOutput, load_classifier

# transformers' own entry points load an ltc_fast checkpoint once ltc_fast is imported: AutoConfig,
# AutoModelForSequenceClassification and so pipeline("text-classification").
AutoConfig.register(LtcConfig.model_type, LtcConfig, exist_ok=True)
AutoModelForSequenceClassification.register(LtcConfig, AutoModelForTokenSequenceClassification, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "AutoModelForTokenSequenceClassification",
    "LabelTokenClassifierOutput",
    "LabelTokenCollator",
    "LtcConfig",
    "backends",
    "from_reference_state_dict",
    "load_classifier",
    "to_reference_state_dict",
    "tokenize_texts",
]
