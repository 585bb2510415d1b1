"""Fused operations of the label-token model, one module per op.

Each module's public function is the plain-PyTorch definition of the op: the test oracle of any fast
kernel added beside it, and the path used where no kernel applies.
"""

from .label_embedding import inject_label_embeddings
from .label_head import label_head_logits
from .label_loss import label_loss_and_probas
from .loss_extension import extension_status

__all__ = ["extension_status", "inject_label_embeddings", "label_head_logits", "label_loss_and_probas"]
