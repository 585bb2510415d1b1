"""What ltc_fast needs to know about each supported encoder architecture.

The model never re-implements an encoder: it calls the Hugging Face `AutoModel` with `inputs_embeds`
and explicit `position_ids`. What differs between architectures is only how the *reference* assigns
default position ids, which config field counts the layers, whether the model has a pooler to drop and
whether it takes token types. That is all in one table here.

Positions: ltc_fast's modes (shared label positions, decoupled label attention, packed execution) set the
encoder's `position_ids` and run its attention through transformers' AttentionInterface. That holds for
absolute position tables (BERT, RoBERTa, ...) and for rotary positions (ModernBERT), where a position id sets
the rotation of a token's query and key, so attention sees position *differences*: labels sharing one position
id are at distance 0 from each other and equally far from every text token. ModernBERT's local layers attend
within a window; ltc_fast measures it in position ids (`|p_query - p_key| <= sliding_window`), which in the
reference layout is the reference's window over sequence slots, and with shared positions keeps every label in
the window of the text's first tokens whatever the number of labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig


@dataclass(frozen=True)
class EncoderSpec:
    # "arange": position i for token i (BERT). "after_padding_idx": padding_idx + 1 + i for real
    # tokens and padding_idx for pad tokens (RoBERTa's create_position_ids_from_input_ids).
    position_scheme: str
    num_layers_attr: str
    has_pooler: bool
    takes_token_type_ids: bool
    # Positions given by `position_ids` (absolute tables or rotary) and attention through transformers'
    # AttentionInterface: what packed (unpadded) execution, shared label positions and decoupled label attention
    # need. False for DeBERTa-v2/v3, whose relative attention ignores position ids.
    positions_from_ids: bool = True
    # Dotted path of the encoder's ModuleList of transformer layers (the unit FSDP shards).
    layers_path: str = "encoder.layer"
    # Names of the attention's query and value nn.Linear modules: LoRA's default targets (ltc_fast.peft_support).
    attention_projections: tuple[str, ...] = ("query", "value")
    # The word-embedding table's state-dict name, below the encoder (where a reference checkpoint's label rows sit).
    word_embeddings_key: str = "embeddings.word_embeddings.weight"


_BERT_LIKE = EncoderSpec("arange", "num_hidden_layers", has_pooler=True, takes_token_type_ids=True)
_ROBERTA_LIKE = EncoderSpec("after_padding_idx", "num_hidden_layers", has_pooler=True, takes_token_type_ids=True)

SUPPORTED_ENCODERS: dict[str, EncoderSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _ROBERTA_LIKE,
    "xlm-roberta": _ROBERTA_LIKE,
    "distilbert": EncoderSpec("arange", "n_layers", has_pooler=False, takes_token_type_ids=False,
                               layers_path="transformer.layer", attention_projections=("q_lin", "v_lin")),
    "electra": EncoderSpec("arange", "num_hidden_layers", has_pooler=False, takes_token_type_ids=True),
    "deberta-v2": EncoderSpec("arange", "num_hidden_layers", has_pooler=False, takes_token_type_ids=True,
                              positions_from_ids=False, attention_projections=("query_proj", "value_proj")),
    # Rotary positions, no pooler, no token types, and local (sliding-window) attention in most layers.
    "modernbert": EncoderSpec("arange", "num_hidden_layers", has_pooler=False, takes_token_type_ids=False,
                              layers_path="layers", attention_projections=("Wqkv",),
                              word_embeddings_key="embeddings.tok_embeddings.weight"),
}


def modes_supported() -> list[str]:
    """Architectures that run every label mode and packed execution."""
    return sorted(name for name, spec in SUPPORTED_ENCODERS.items() if spec.positions_from_ids)


def encoder_spec(config: PretrainedConfig) -> EncoderSpec:
    """The spec of `config`'s architecture, or a ValueError naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ENCODERS:
        raise ValueError(
            f"encoder architecture {model_type!r} is not supported by ltc_fast; supported model_type values "
            f"are: {', '.join(sorted(SUPPORTED_ENCODERS))}"
        )
    return SUPPORTED_ENCODERS[model_type]


def num_layers(config: PretrainedConfig) -> int:
    return getattr(config, encoder_spec(config).num_layers_attr)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The transformer layers of a Hugging Face encoder (`AutoModel`) of a supported architecture."""
    return encoder.get_submodule(encoder_spec(encoder.config).layers_path)


def set_num_layers(config: PretrainedConfig, value: int) -> None:
    """Keep the first `value` layers (ModernBERT's per-layer attention types with them)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = list(layer_types[:value])
    setattr(config, encoder_spec(config).num_layers_attr, value)


def attention_dropout(config: PretrainedConfig) -> float:
    """The dropout probability on the attention weights (DistilBERT names it differently)."""
    return float(getattr(config, "attention_probs_dropout_prob", getattr(config, "attention_dropout", 0.0)))


def sliding_window(config: PretrainedConfig) -> int | None:
    """The largest position distance a local attention layer spans (`|p_query - p_key| <= window`), or None where
    every layer attends globally (ModernBERT's `sliding_window` is half its `local_attention`)."""
    if "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return None
    return config.sliding_window


def attention_head_size(config: PretrainedConfig) -> int:
    """The width of one attention head (configs map DistilBERT's dim / n_heads onto these names)."""
    return config.hidden_size // config.num_attention_heads


def max_sequence_length(config: PretrainedConfig) -> int:
    """How many tokens (labels and specials included) one sequence may hold under the default positions."""
    if encoder_spec(config).position_scheme == "after_padding_idx":
        # Positions start after padding_idx, so padding_idx + 1 rows of the table are never used.
        return config.max_position_embeddings - config.pad_token_id - 1
    return config.max_position_embeddings
