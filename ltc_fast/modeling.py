"""The drop-in label-token classifier.

forward: plain text ids -> layout (label slots after [CLS], reference positions) -> embeddings with the
label rows injected -> the Hugging Face encoder -> shared `Linear(H, 1)` on the label states -> loss.
Labels never appear in `input_ids`; reference-format ids (label ids in positions 1..N) are accepted too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from . import checkpoints, encoders, layout, ops
from .config import MULTI_LABEL, LtcConfig, normalize_problem_type, resolve_label_names
from .targets import prepare_targets

_LAYER_INDEX = re.compile(r"^transformer\.(?:encoder|transformer)\.layer\.(\d+)\.")


@dataclass
class LabelTokenClassifierOutput(ModelOutput):
    """`loss` (when labels are given), `logits` and `probas` of shape `[batch_size, num_labels]`.
    `hidden_states` / `attentions` are the encoder's, over the `[CLS] labels text` sequence."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    probas: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class AutoModelForTokenSequenceClassification(PreTrainedModel):
    config_class = LtcConfig
    base_model_prefix = "ltc"
    main_input_name = "input_ids"
    # forward takes `num_items_in_batch`, so Trainer lets the model normalise the loss over the whole
    # accumulated batch instead of dividing per micro-batch (the reference's gradient-accumulation bug).
    accepts_loss_kwargs = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: LtcConfig):
        super().__init__(config)
        spec = encoders.encoder_spec(config.encoder)
        pooler_kwargs = {"add_pooling_layer": False} if spec.has_pooler else {}
        self.transformer = AutoModel.from_config(config.encoder, **pooler_kwargs)
        embedding_dim = self.transformer.get_input_embeddings().embedding_dim
        self.label_embeddings = nn.Embedding(config.num_labels, embedding_dim)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if module is self.classifier:
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif module is self.label_embeddings:
            nn.init.normal_(module.weight, mean=0.0, std=std)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_config(cls, config, **options) -> "AutoModelForTokenSequenceClassification":
        """A randomly initialised model from an `LtcConfig`, or from an encoder config plus the options of
        `LtcConfig` (`num_labels`, `label_names`, `problem_type`, `hidden_layer`, ...)."""
        if isinstance(config, LtcConfig):
            if options:
                raise ValueError(f"options {sorted(options)} go into the LtcConfig itself, not beside it")
            return cls(config)
        return cls(LtcConfig(encoder=config, **options))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        num_labels: int | None = None,
        label_names: list[str] | None = None,
        problem_type: str | None = None,
        label_init: str = "random",
        hidden_layer: int = -1,
        label_head_dropout: float = 0.1,
        label_positions: str | None = None,
        label_attention: str | None = None,
        tokenizer=None,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        **encoder_config_overrides,
    ) -> "AutoModelForTokenSequenceClassification":
        """Load an ltc_fast checkpoint, a saved reference checkpoint (label rows at the end of the word
        embeddings; `pytorch_model.bin` or safetensors) or a plain encoder (a new head and label table,
        initialised by `label_init`: random | avg | label_name | cls).

        `label_positions` / `label_attention` (see `LtcConfig`) default to the checkpoint's, else the
        reference's. `encoder_config_overrides` (e.g. `hidden_dropout_prob=0.0`) update the encoder's config.
        """
        path = str(pretrained_model_name_or_path)
        found = AutoConfig.from_pretrained(path)
        for key, value in encoder_config_overrides.items():
            setattr(found.encoder if isinstance(found, LtcConfig) else found, key, value)
        modes = {k: v for k, v in (("label_positions", label_positions), ("label_attention", label_attention))
                 if v is not None}
        if isinstance(found, LtcConfig):
            if modes:  # validated by LtcConfig's own checks
                found = LtcConfig(**{**found.to_dict(), **modes})
            model = cls._from_ltc_checkpoint(path, found, num_labels, label_names, problem_type)
        else:
            options = dict(problem_type=problem_type, label_init=label_init, hidden_layer=hidden_layer,
                           label_head_dropout=label_head_dropout, **modes)
            if checkpoints.is_reference_checkpoint(path):
                model = cls._from_reference_checkpoint(path, found, num_labels, label_names, options)
            else:
                model = cls._from_encoder(path, found, num_labels, label_names, options, tokenizer)
        model.name_or_path = model.config._name_or_path = path  # where `predict` finds the saved tokenizer
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)  # HF's own switch, sub-models included
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    @classmethod
    def _from_ltc_checkpoint(cls, path, config, num_labels, label_names, problem_type):
        if num_labels is not None and num_labels != config.num_labels:
            raise ValueError(f"num_labels={num_labels} disagrees with the checkpoint at {path!r}, which has "
                             f"{config.num_labels} labels")
        if label_names is not None and list(label_names) != config.label_names:
            raise ValueError(f"label_names disagree with the checkpoint at {path!r}: given {list(label_names)}, "
                             f"saved {config.label_names}")
        if problem_type is not None:
            config.problem_type = normalize_problem_type(problem_type)
        model = cls(config)
        model.load_state_dict(checkpoints.load_state_dict(path), strict=True)
        return model

    @classmethod
    def _from_reference_checkpoint(cls, path, encoder_config, num_labels, label_names, options):
        saved_names = [encoder_config.id2label[i] for i in range(len(encoder_config.id2label or {}))]
        if label_names is None and num_labels in (None, len(saved_names)) and saved_names:
            label_names = saved_names
        names = resolve_label_names(num_labels, label_names)
        state = checkpoints.from_reference_state_dict(checkpoints.load_state_dict(path), len(names))
        encoder_config.vocab_size = state[checkpoints.word_embeddings_key(state)].shape[0]
        if options["problem_type"] is None:
            options["problem_type"] = encoder_config.problem_type
        model = cls(LtcConfig(encoder=encoder_config, label_names=names, **options))
        # Weights of encoder layers above `hidden_layer` are not part of the model; nothing else may be left.
        kept_layers = encoders.num_layers(model.config.encoder)
        above = [k for k in state if (m := _LAYER_INDEX.search(k)) and int(m.group(1)) >= kept_layers]
        model.load_state_dict({k: v for k, v in state.items() if k not in above}, strict=True)
        return model

    @classmethod
    def _from_encoder(cls, path, encoder_config, num_labels, label_names, options, tokenizer):
        config = LtcConfig(encoder=encoder_config, label_names=resolve_label_names(num_labels, label_names),
                           **options)
        model = cls(config)
        pooler_kwargs = {"add_pooling_layer": False} if encoders.encoder_spec(config.encoder).has_pooler else {}
        model.transformer = AutoModel.from_pretrained(path, config=config.encoder, **pooler_kwargs)
        if config.label_init in ("label_name", "cls") and tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)
        model.init_label_embeddings(config.label_init, tokenizer)
        return model

    @torch.no_grad()
    def init_label_embeddings(self, method: str, tokenizer=None) -> None:
        """Set every label row: `random` N(0, initializer_range), `avg` the mean word embedding of the
        vocabulary, `label_name` the mean embedding of the label name's word pieces, `cls` the [CLS] row."""
        words = self.transformer.get_input_embeddings().weight
        rows = self.label_embeddings.weight
        if method == "random":
            rows.normal_(mean=0.0, std=self.config.initializer_range)
        elif method == "avg":
            rows.copy_(words.float().mean(dim=0).expand_as(rows))
        elif method == "cls":
            if tokenizer is None or tokenizer.cls_token_id is None:
                raise ValueError("label_init='cls' needs a tokenizer with a cls_token (pass tokenizer=...)")
            rows.copy_(words[tokenizer.cls_token_id].expand_as(rows))
        elif method == "label_name":
            rows.copy_(self._label_name_embeddings(words, tokenizer))
        else:
            raise ValueError(f"label_init must be one of random, avg, label_name, cls; got {method!r}")
        self.config.label_init = method

    def _label_name_embeddings(self, words: torch.Tensor, tokenizer) -> torch.Tensor:
        names = self.config.label_names
        if names == [f"LABEL_{i}" for i in range(len(names))]:
            raise ValueError("label_init='label_name' needs label_names; the model only has placeholder names")
        if tokenizer is None:
            raise ValueError("label_init='label_name' needs a tokenizer (pass tokenizer=...)")
        means = []
        for name in names:
            piece_ids = tokenizer(name, add_special_tokens=False)["input_ids"]
            if not piece_ids:
                raise ValueError(f"label name {name!r} tokenizes to no word pieces; label_init='label_name' "
                                 f"cannot initialise it")
            means.append(words[torch.tensor(piece_ids, device=words.device)].float().mean(dim=0))
        return torch.stack(means)

    # ------------------------------------------------------------------ prediction
    def predict(self, texts, tokenizer=None, top_k: int | None = None, threshold: float | None = None,
                batch_size: int = 32, max_length: int | None = None) -> list[list[dict]]:
        """Labels of raw texts: for each text `[{"label": name, "score": probability}, ...]`, best first.
        Multi-label: the labels at or above `threshold` (default: the saved per-label thresholds, else
        0.5), at most `top_k`; `top_k` alone gives the k best. Single-label: the best label by default.
        `tokenizer` may be left out when the model was loaded from a directory that holds one."""
        from .prediction import predict  # prediction.py sits on top of this module

        return predict(self, texts, tokenizer=tokenizer, top_k=top_k, threshold=threshold,
                       batch_size=batch_size, max_length=max_length)

    # ------------------------------------------------------------------ forward
    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> LabelTokenClassifierOutput:
        """`input_ids` `[B, T]`: tokenized text with its special tokens and no label tokens (see
        `ltc_fast.tokenize_texts`), or the reference's ids with the label block after [CLS].
        `labels`: float `[B, N]` (multi-label) or class ids `[B]` / one-hot rows (single-label)."""
        text_ids, attention_mask, token_type_ids = self._text_inputs(input_ids, attention_mask, token_type_ids)
        encoder_inputs = self._encoder_inputs(text_ids, attention_mask, token_type_ids)
        encoded = self.transformer(
            **encoder_inputs,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )
        logits = ops.label_head_logits(
            encoded.last_hidden_state,
            self.classifier.weight,
            self.classifier.bias,
            self.num_labels,
            dropout_p=self.config.label_head_dropout,
            training=self.training,
            backend=self.config.ops_backend,
        )
        targets = None
        if labels is not None:
            targets = prepare_targets(labels, self.config.problem_type, logits.shape[0], self.num_labels)
            if num_items_in_batch is not None:
                # The Trainer counts label tensor *elements*; the loss averages over loss terms: N per row
                # for multi-label, 1 per row for single-label (whose one-hot rows count N elements each).
                loss_terms_per_row = self.num_labels if self.config.problem_type == MULTI_LABEL else 1
                num_items_in_batch = num_items_in_batch * loss_terms_per_row / targets.label_elements_per_row
        loss, probas = ops.label_loss_and_probas(
            logits,
            None if targets is None else targets.values,
            multi_label=self.config.problem_type == MULTI_LABEL,
            num_items_in_batch=num_items_in_batch,
            backend=self.config.ops_backend,
        )
        return LabelTokenClassifierOutput(
            loss=loss,
            logits=logits,
            probas=probas,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    def _text_inputs(self, input_ids, attention_mask, token_type_ids):
        """Validate the inputs and return plain text ids, mask and token types `[B, T]`."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor of shape [batch_size, seq_len], got {got}")
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {list(input_ids.shape)}, "
                                 f"got {list(tensor.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        vocab_size = self.transformer.get_input_embeddings().num_embeddings
        if (input_ids >= vocab_size).any():
            label_block = slice(layout.LABEL_START, layout.LABEL_START + self.num_labels)
            input_ids = layout.label_block_to_text_ids(input_ids, self.num_labels, vocab_size)
            keep = [i for i in range(attention_mask.shape[1]) if not label_block.start <= i < label_block.stop]
            attention_mask = attention_mask[:, keep]
            token_type_ids = None if token_type_ids is None else token_type_ids[:, keep]
        return input_ids, attention_mask, token_type_ids

    def _encoder_inputs(self, text_ids, attention_mask, token_type_ids) -> dict:
        encoder_config = self.config.encoder
        spec = encoders.encoder_spec(encoder_config)
        seq_len = text_ids.shape[1] + self.num_labels
        limit = encoders.max_sequence_length(encoder_config)
        if seq_len > limit:
            raise ValueError(
                f"num_labels ({self.num_labels}) + input length ({text_ids.shape[1]} tokens, [CLS] and [SEP] "
                f"included) = {seq_len} exceeds the encoder's {limit} positions; tokenize with "
                f"ltc_fast.tokenize_texts(..., num_labels={self.num_labels}, max_length={limit}), which keeps at "
                f"most {limit - self.num_labels} text tokens"
            )
        words = self.transformer.get_input_embeddings()
        inputs = {
            "inputs_embeds": ops.inject_label_embeddings(
                text_ids, words.weight, self.label_embeddings.weight, padding_idx=words.padding_idx,
                backend=self.config.ops_backend,
            ),
            "attention_mask": layout.insert_label_slots(attention_mask, self.num_labels, 1),
            "position_ids": layout.reference_position_ids(
                text_ids, self.num_labels, spec.position_scheme, encoder_config.pad_token_id
            ),
        }
        if spec.takes_token_type_ids:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(text_ids)
            inputs["token_type_ids"] = layout.insert_label_slots(token_type_ids, self.num_labels, 0)
        return inputs
