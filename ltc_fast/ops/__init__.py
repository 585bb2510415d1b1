"""Fused operations of the label-token model, one module per op.

Each module holds one op, in one order: its plain-PyTorch twin (`<op>_torch`, the definition and the test
oracle), its fast kernel (Triton, or the C++/CUDA loss extension) registered as `torch.library` custom ops,
validation, and the public function, which picks one of them through `dispatch.resolve_backend` (`backend=`,
`LTC_FAST_BACKEND=torch`).
"""

from .label_attention import labels_attend_text
from .label_embedding import inject_label_embeddings
from .label_head import label_head_logits
from .label_loss import label_loss_and_probas
from .loss_extension import extension_status

__all__ = ["extension_status", "inject_label_embeddings", "label_head_logits", "label_loss_and_probas",
           "labels_attend_text"]
