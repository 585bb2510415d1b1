"""`hidden_layer=k` feeds the head from layer k, and layers above k are not built or computed."""

import pytest
import torch

from ltc_fast import AutoModelForTokenSequenceClassification as Model
from ltc_fast.encoders import encoder_layers
from tests.helpers import check_over_draws, fp64_copy, reference_and_ltc, reference_format, text_batch


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "deberta-v2", "modernbert"])
@pytest.mark.parametrize("hidden_layer,kept", [(1, 1), (2, 2), (-2, 1), (-1, 2)])
def test_head_reads_layer_k_and_upper_layers_are_gone(arch, hidden_layer, kept, tmp_path):
    reference, _ = reference_and_ltc(arch, 5, num_hidden_layers=2, n_layers=2)
    reference.save_pretrained(tmp_path)
    model = Model.from_pretrained(tmp_path, hidden_layer=hidden_layer)
    assert len(encoder_layers(model.transformer)) == kept

    oracle = fp64_copy(reference)

    def layer_k_logits(reference, ref_ids, ref_mask):
        states = reference.transformer(ref_ids, attention_mask=ref_mask, output_hidden_states=True).hidden_states
        layer_k = states[hidden_layer]
        if arch == "modernbert" and hidden_layer not in (-1, len(states) - 1):
            layer_k = reference.transformer.final_norm(layer_k)  # pre-norm: the last layer's is applied already
        return reference.classifier(layer_k)[:, 1:6, 0]

    def draw(samples):  # the accuracy rule: the reference's layer-k logits in fp64 the oracle, in fp32 plain
        text_ids, mask = text_batch(3, 7, pad_id=model.config.encoder.pad_token_id)
        ref_ids, ref_mask = reference_format(text_ids, mask, 5)
        with torch.no_grad():
            samples.add("logits", model(text_ids, mask).logits, layer_k_logits(reference, ref_ids, ref_mask),
                        layer_k_logits(oracle, ref_ids, ref_mask))

    check_over_draws(3 * 5, draw)


@pytest.mark.parametrize("hidden_layer", [0, 3, -3, 1.5])
def test_hidden_layer_out_of_range_is_a_clear_error(hidden_layer, tmp_path):
    reference, _ = reference_and_ltc("bert", 2, num_hidden_layers=2)
    reference.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_layer must"):
        Model.from_pretrained(tmp_path, hidden_layer=hidden_layer)
