"""The drop-in label-token classifier.

forward: plain text ids -> layout (label slots after [CLS], reference or shared positions) -> embeddings
with the label rows injected -> the Hugging Face encoder (padded, or packed without padding) -> shared
`Linear(H, 1)` on the label states -> loss. Labels never appear in `input_ids`; reference-format ids
(label ids in positions 1..N) are accepted too.

`label_attention="decoupled"` runs the text once on its own, then the labels (in chunks, or a sampled
subset while training) attending the text's cached keys and values: see `ltc_fast.attention`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from . import attention, encoders, layout, loading, ops, peft_support, prediction, sampling
from .config import MULTI_LABEL, LtcConfig
from .targets import check_target_values, invalid_targets, loss_items_in_batch, prepare_targets


@dataclass
class LabelTokenClassifierOutput(ModelOutput):
    """`loss` (when labels are given), `logits` and `probas` of shape `[batch_size, num_labels]`.
    `hidden_states` / `attentions` are the encoder's, over the `[CLS] labels text` sequence (decoupled
    mode: over the text alone). When a subset of labels is scored (`subset`, or sampled negatives while
    training), `logits`/`probas` are `[batch_size, len(label_ids)]` and `label_ids` says which labels."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    probas: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    label_ids: torch.Tensor | None = None  # which labels the columns of logits are, when not all N


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

    def __init__(self, config: LtcConfig | PretrainedConfig):
        if not isinstance(config, LtcConfig):  # the encoder's own config, labels on it, as the reference takes it
            config = LtcConfig(encoder=config)
        super().__init__(config)
        spec = encoders.encoder_spec(config.encoder)
        pooler_kwargs = {"add_pooling_layer": False} if spec.has_pooler else {}
        self.transformer = AutoModel.from_config(config.encoder, **pooler_kwargs)
        embedding_dim = self.transformer.get_input_embeddings().embedding_dim
        self.label_embeddings = nn.Embedding(config.num_labels, embedding_dim)
        self.classifier = nn.Linear(config.hidden_size, 1)
        # Sampling weights of negative labels (negative_sampling="score"); set with set_negative_sampling_scores.
        self.register_buffer("negative_sampling_scores", None, persistent=False)
        self.post_init()
        self._use_ltc_attention()

    def _use_ltc_attention(self) -> None:
        """Run the encoder's attention through `ltc_fast.attention` (SDPA for padded batches, so the numbers
        of `attn_implementation="sdpa"`), which adds packed and decoupled execution. DeBERTa-v2 keeps its own."""
        if encoders.encoder_spec(self.config.encoder).positions_from_ids:
            self.transformer.set_attn_implementation(attention.NAME)

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
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        **options) -> "AutoModelForTokenSequenceClassification":
        """Load an ltc_fast checkpoint, a saved reference checkpoint (label rows at the end of the word
        embeddings; `pytorch_model.bin` or safetensors) or a plain encoder (a new head and label table,
        initialised by `label_init`: random | avg | label_name | cls). Options: `num_labels`, `label_names`,
        `problem_type`, `label_init`, `hidden_layer`, `label_head_dropout`, `tokenizer`, `dtype`,
        `attn_implementation`, `config` (an LtcConfig, or the encoder's config with its labels on it, as the
        reference's training script passes it), the execution options of `LtcConfig` (for an ltc_fast
        checkpoint they replace the saved values), and any encoder config field (e.g. `hidden_dropout_prob=0.0`).
        See `ltc_fast.loading.load_pretrained`."""
        return loading.load_pretrained(cls, pretrained_model_name_or_path, **options)

    def init_label_embeddings(self, method: str, tokenizer=None) -> None:
        """Set every label row: `random` N(0, initializer_range), `avg` the mean word embedding of the
        vocabulary, `label_name` the mean embedding of the label name's word pieces, `cls` the [CLS] row."""
        loading.init_label_embeddings(self, method, tokenizer)

    # ------------------------------------------------------------------ prediction
    def predict(self, texts, tokenizer=None, top_k: int | None = None, threshold: float | None = None,
                batch_size: int = 32, max_length: int | None = None, sort_by_length: bool = True,
                compiled=False) -> list[list[dict]]:
        """Labels of raw texts: for each text `[{"label": name, "score": probability}, ...]`, best first.
        Multi-label: the labels at or above `threshold` (default: the saved per-label thresholds, else
        0.5), at most `top_k`; `top_k` alone gives the k best. Single-label: the best label by default.
        `tokenizer` may be left out when the model was loaded from a directory that holds one. Texts are
        batched by length (`sort_by_length`), the results returned in their order. `compiled=True` runs the
        model under `torch.compile` (CUDA graphs on a GPU) on padded shapes that repeat (`prediction.iter_probas`)."""
        return prediction.predict(self, texts, tokenizer=tokenizer, top_k=top_k, threshold=threshold,
                                  batch_size=batch_size, max_length=max_length, sort_by_length=sort_by_length,
                                  compiled=compiled)

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
        subset: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> LabelTokenClassifierOutput | tuple:
        """`input_ids` `[B, T]`: tokenized text with its special tokens and no label tokens (see
        `ltc_fast.tokenize_texts`), or the reference's ids with the label block after [CLS].
        `labels`: float `[B, N]` (multi-label) or class ids `[B]` / one-hot rows (single-label), over all N.
        `subset` (decoupled mode): score only these labels (`[n]` distinct label ids); their logits equal the
        same labels' logits of a full pass. (Not named `label_*`: transformers' Trainer would take any forward
        argument with "label" in its name for a target.)
        `inputs_embeds` and `return_dict` are there for callers that always pass them (peft's SEQ_CLS model):
        `inputs_embeds` must be None (the model builds the encoder's input from input_ids and its label table);
        `return_dict=False` returns the output's non-None fields as a tuple, as transformers' models do."""
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported: the model builds the encoder's input itself from "
                             "input_ids (the text's token ids) and its label table; pass input_ids")
        peft_support.check_direct_weights(self)
        self._check_input_shapes(input_ids, attention_mask, token_type_ids)
        targets = None
        if labels is not None:
            targets = prepare_targets(labels, self.config.problem_type, input_ids.shape[0], self.num_labels)
        text_ids, attention_mask, token_type_ids = self._text_inputs(input_ids, attention_mask, token_type_ids, labels)
        decoupled = self.config.label_attention == "decoupled"
        label_ids = self._check_subset(subset, decoupled, text_ids.device)
        if decoupled and label_ids is None and self.training and targets is not None and self.config.sampled_negatives:
            label_ids = sampling.sample_label_ids(targets.values, self.config.problem_type, self.num_labels,
                                                  self.config.sampled_negatives, self._negative_sampling_weights())
        # One of three executions of the same function, each layout -> embed -> encoder -> head.
        if decoupled:
            run = self._decoupled_logits
        else:
            run = self._packed_logits if self._packs(attention_mask, output_hidden_states, output_attentions) \
                else self._padded_logits
        logits, encoded = run(text_ids, attention_mask, token_type_ids, label_ids, output_hidden_states,
                              output_attentions)
        if targets is not None:
            if num_items_in_batch is not None:
                num_items_in_batch = loss_items_in_batch(num_items_in_batch, targets, logits.shape[1],
                                                         self.config.problem_type)
            targets = targets.values if label_ids is None else sampling.subset_targets(
                targets.values, label_ids, self.config.problem_type, self.num_labels)
        loss, probas = ops.label_loss_and_probas(
            logits,
            targets,
            multi_label=self.config.problem_type == MULTI_LABEL,
            num_items_in_batch=num_items_in_batch,
            backend=self.config.ops_backend,
            check_values=False,  # the targets' values were checked with the inputs' (check_inputs)
        )
        output = LabelTokenClassifierOutput(
            loss=loss,
            logits=logits,
            probas=probas,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            label_ids=label_ids,
        )
        return output if return_dict is None or return_dict else output.to_tuple()

    def _head(self, hidden_states: torch.Tensor, label_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[B, n]`: of the N label slots of padded `[B, S, H]` states, or of the states at `label_rows`
        (`[B, n]` rows of flattened `[rows, H]` states)."""
        return ops.label_head_logits(
            hidden_states,
            self.classifier.weight,
            self.classifier.bias,
            self.num_labels if label_rows is None else label_rows.shape[1],
            dropout_p=self.config.label_head_dropout,
            training=self.training,
            backend=self.config.ops_backend,
            label_rows=label_rows,
            check_values=False,  # the model built the label rows
        )

    # ------------------------------------------------------------------ full attention (the reference's)
    # The three executions share one signature: (text_ids, attention_mask, token_type_ids, label_ids,
    # output_hidden_states, output_attentions) -> (logits [B, n], the encoder's output).
    def _padded_logits(self, text_ids, attention_mask, token_type_ids, label_ids, output_hidden_states,
                       output_attentions):
        """`[CLS] labels text pad...` as the reference lays it out, through SDPA with a padding mask."""
        self._check_length(text_ids.shape[1])
        inputs = self._layout_inputs(text_ids, attention_mask, token_type_ids)
        window = encoders.sliding_window(self.config.encoder)
        if window is not None and self.config.label_positions == "shared":
            # Local layers' windows are in position ids, which shared positions make differ from sequence slots
            # (transformers' own masks); in the reference layout the two agree and transformers' masks serve.
            inputs["attention_mask"] = attention.position_window_masks(
                inputs["attention_mask"], inputs["position_ids"], window, self._mask_format())
        encoded = self.transformer(**inputs, inputs_embeds=self._embed(text_ids), return_dict=True,
                                   output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        return self._head(encoded.last_hidden_state), encoded

    def _packed_logits(self, text_ids, attention_mask, token_type_ids, label_ids, output_hidden_states,
                       output_attentions):
        """The real tokens of every sequence back to back in one row, offsets in cu_seqlens: no padding computed."""
        self._check_length(text_ids.shape[1])
        inputs = self._layout_inputs(text_ids, attention_mask, token_type_ids)
        mask = inputs.pop("attention_mask")
        if mask is None:  # packing forced on a batch given without a mask: nothing is padded
            mask = torch.ones_like(inputs["position_ids"])
        batch, seq_len = mask.shape
        packing = layout.pack(mask, self.num_labels)
        packed = {name: value.reshape(-1)[packing.rows].unsqueeze(0) for name, value in inputs.items()}
        packed["inputs_embeds"] = self._embed(text_ids.reshape(-1)[packing.text_rows],
                                              cu_seqlens=packing.text_cu_seqlens).unsqueeze(0)
        encoded = self.transformer(
            **packed, output_hidden_states=output_hidden_states, return_dict=True,
            ltc_packed=attention.PackedSequences(packing.cu_seqlens, packing.max_seqlen, packing.host_offsets,
                                                 position_ids=packed["position_ids"][0]),
        )
        logits = self._head(encoded.last_hidden_state[0], packing.label_rows)
        if output_hidden_states:
            encoded.hidden_states = tuple(layout.unpack(h[0], packing, batch, seq_len) for h in encoded.hidden_states)
        return logits, encoded

    def _packs(self, attention_mask, output_hidden_states, output_attentions) -> bool:
        """Whether this batch runs packed (unpadded): `sequence_packing` = auto | packed | padded."""
        mode = self.config.sequence_packing
        if mode == "padded":
            return False
        if mode == "packed":
            self._check_attention_backend("sequence_packing='packed'", output_attentions)
            return True
        # auto: where packing pays (attention.packing_pays: a fused varlen kernel, whose compute dtype is
        # autocast's when it is on; or CPU inference), and a mask was given (without one nothing is padded; with
        # one, reading whether it pads anything would be a host sync of its own: the packing reads the offsets
        # anyway), and not while compiled, traced or exported (the packed layout reads its offsets on the host:
        # a graph break; compiled callers pad to repeating shapes)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else self.dtype
        dropout = encoders.attention_dropout(self.config.encoder) if self.training else 0.0
        # (Local attention layers take the exact per-sequence loop when packed, so they stay padded.)
        traced = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        return (attention_mask is not None and not traced and self._runs_ltc_attention()
                and not output_attentions and not output_hidden_states
                and encoders.sliding_window(self.config.encoder) is None
                and attention.packing_pays(attention_mask.device, dtype, dropout,
                                           encoders.attention_head_size(self.config.encoder), torch.is_grad_enabled()))

    def _mask_format(self) -> torch.dtype | None:
        """How the encoder's attention takes an explicit mask: bool (ltc_fast, SDPA), or additive in the model's
        dtype (eager); other implementations (flash-attn, flex) take none that holds a window in position ids."""
        implementation = self.transformer.config._attn_implementation
        if implementation in (attention.NAME, "sdpa"):
            return None
        if implementation == "eager":
            return self.dtype
        raise ValueError(f"label_positions='shared' on {self.config.encoder.model_type!r}, whose local attention "
                         f"layers measure their window in position ids, needs attn_implementation "
                         f"{attention.NAME!r}, 'sdpa' or 'eager'; this model uses {implementation!r}")

    def _runs_ltc_attention(self) -> bool:
        return self.transformer.config._attn_implementation == attention.NAME

    def _check_attention_backend(self, what: str, output_attentions) -> None:
        if not encoders.encoder_spec(self.config.encoder).positions_from_ids:
            raise ValueError(f"{what} needs an encoder with positions from position ids (absolute or rotary) and "
                             f"transformers' AttentionInterface "
                             f"({', '.join(encoders.modes_supported())}); {self.config.encoder.model_type!r} has "
                             f"relative positions: use sequence_packing='padded' (or 'auto')")
        if not self._runs_ltc_attention():
            raise ValueError(
                f"{what} runs on the encoder attention implementation {attention.NAME!r} (the default for "
                f"{', '.join(encoders.modes_supported())}); this model uses "
                f"{self.transformer.config._attn_implementation!r}: call model.set_attn_implementation("
                f"{attention.NAME!r}) or load without attn_implementation"
            )
        if output_attentions:
            raise ValueError(f"output_attentions=True is not available with {what}: it never forms the full "
                             f"attention matrix; use the padded full-attention path (sequence_packing='padded')")

    # ------------------------------------------------------------------ decoupled attention
    def _decoupled_logits(self, text_ids, attention_mask, token_type_ids, label_ids, output_hidden_states,
                          output_attentions):
        """Text pass (keys and values of every layer recorded), then the labels in chunks attending them."""
        self._check_attention_backend("label_attention='decoupled'", output_attentions)
        spec = encoders.encoder_spec(self.config.encoder)
        pad = self.config.encoder.pad_token_id
        self._check_length(text_ids.shape[1])
        key_padding = torch.ones_like(text_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        text = attention.DecoupledText(key_padding=key_padding, ops_backend=self.config.ops_backend)
        text_inputs = {"input_ids": text_ids, "attention_mask": attention_mask,
                       "position_ids": layout.text_position_ids(text_ids, spec.position_scheme, pad)}
        if spec.takes_token_type_ids:
            text_inputs["token_type_ids"] = torch.zeros_like(text_ids) if token_type_ids is None else token_type_ids
        encoded = text.record(self.transformer, **text_inputs, output_hidden_states=output_hidden_states)
        batch = text_ids.shape[0]
        if label_ids is None:
            label_ids = torch.arange(self.num_labels, device=text_ids.device)
        chunks = []
        for chunk in label_ids.split(self.config.label_chunk_size or label_ids.numel()):
            positions = layout.label_position_ids(chunk, self.config.label_positions, spec.position_scheme, pad)
            label_inputs = {"inputs_embeds": self.label_embeddings(chunk).unsqueeze(0).expand(batch, -1, -1),
                            "position_ids": positions.unsqueeze(0).expand(batch, -1)}
            if spec.takes_token_type_ids:
                label_inputs["token_type_ids"] = torch.zeros(batch, chunk.numel(), dtype=torch.long,
                                                             device=chunk.device)
            states = text.attend(self.transformer, **label_inputs).last_hidden_state
            rows = torch.arange(batch * chunk.numel(), device=chunk.device).view(batch, -1)
            chunks.append(self._head(states.reshape(rows.numel(), -1), rows))
        return torch.cat(chunks, dim=1), encoded

    def _check_subset(self, label_ids, decoupled, device):
        if label_ids is None:
            return None
        if not decoupled:
            raise ValueError("subset (scoring some of the labels) needs label_attention='decoupled'; with full "
                             "attention every label's logit depends on all the others")
        label_ids = torch.as_tensor(label_ids, device=device)
        if label_ids.dim() != 1 or label_ids.is_floating_point() or label_ids.numel() == 0:
            raise ValueError(f"subset must be a non-empty 1-D tensor of label indices, got "
                             f"{list(label_ids.shape)} {label_ids.dtype}")
        if label_ids.min() < 0 or label_ids.max() >= self.num_labels:
            raise ValueError(f"subset must lie in [0, {self.num_labels - 1}], got values from "
                             f"{int(label_ids.min())} to {int(label_ids.max())}")
        if label_ids.unique().numel() != label_ids.numel():
            raise ValueError("subset must not repeat a label")
        return label_ids.long()

    def _negative_sampling_weights(self) -> torch.Tensor | None:
        """None for uniform negatives; the scores set by `set_negative_sampling_scores` for "score"."""
        if self.config.negative_sampling != "score":
            return None
        if self.negative_sampling_scores is None:
            raise ValueError("negative_sampling='score' needs model.set_negative_sampling_scores(scores) first")
        return self.negative_sampling_scores

    @torch.no_grad()
    def set_negative_sampling_scores(self, scores: torch.Tensor | None) -> None:
        """Weights `[N]` (>= 0) for drawing negative labels when `negative_sampling="score"`, e.g. how often
        each label is confused; `None` clears them."""
        if scores is not None:
            scores = torch.as_tensor(scores, dtype=torch.float32, device=self.label_embeddings.weight.device)
            if scores.shape != (self.num_labels,) or not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
                raise ValueError(f"scores must be {self.num_labels} finite values >= 0 (one per label), got "
                                 f"shape {list(scores.shape)}")
        self.negative_sampling_scores = scores

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _check_input_shapes(input_ids, attention_mask, token_type_ids) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor of shape [batch_size, seq_len], got {got}")
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tensor is not None and tensor.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {list(input_ids.shape)}, "
                                 f"got {list(tensor.shape)}")

    def _text_inputs(self, input_ids, attention_mask, token_type_ids, labels):
        """Plain text ids, mask (None: nothing padded) and token types `[B, T]`. With `check_inputs` (and outside
        torch.compile) the values of input_ids and labels are read once, in one host sync for the whole forward:
        reference-format ids are recognised and their label block stripped, bad values are a clear error."""
        if not self.config.check_inputs or torch.compiler.is_compiling():
            return input_ids, attention_mask, token_type_ids
        vocab_size = self.transformer.get_input_embeddings().num_embeddings
        flags = [(input_ids >= vocab_size).any(), (input_ids < 0).any()]
        if labels is not None:
            flags.append(invalid_targets(labels, self.config.problem_type, self.num_labels))
        label_ids_seen, negative_ids, *bad_labels = torch.stack(flags).tolist()  # the forward's one host read
        if any(bad_labels):
            check_target_values(labels, self.config.problem_type, self.num_labels)
        if negative_ids:
            raise ValueError(f"input_ids must be token ids in [0, {vocab_size}), got values from "
                             f"{int(input_ids.min())} to {int(input_ids.max())}")
        if label_ids_seen:
            label_block = slice(layout.LABEL_START, layout.LABEL_START + self.num_labels)
            input_ids = layout.label_block_to_text_ids(input_ids, self.num_labels, vocab_size)
            keep = [i for i in range(input_ids.shape[1] + self.num_labels)
                    if not label_block.start <= i < label_block.stop]
            attention_mask = None if attention_mask is None else attention_mask[:, keep]
            token_type_ids = None if token_type_ids is None else token_type_ids[:, keep]
        return input_ids, attention_mask, token_type_ids


    def _check_length(self, text_len: int) -> None:
        """The positions this mode needs must exist in the encoder's position table."""
        limit = encoders.max_sequence_length(self.config.encoder)
        slots = layout.label_slots(self.num_labels, self.config.label_positions, self.config.label_attention)
        if slots + 3 > limit:  # [CLS], [SEP] and at least one word piece
            raise ValueError(
                f"{self.num_labels} labels at their own positions (label_positions='reference') leave no room for "
                f"text in the encoder's {limit} positions; use label_positions='shared' (any number of labels)"
            )
        if text_len + slots > limit:
            raise ValueError(
                f"{slots} label position(s) + input length ({text_len} tokens, [CLS] and [SEP] included) = "
                f"{text_len + slots} exceeds the encoder's {limit} positions; tokenize with "
                f"ltc_fast.tokenize_texts(..., num_labels={self.num_labels}, max_length={limit}, "
                f"label_positions={self.config.label_positions!r}, label_attention={self.config.label_attention!r}), "
                f"which keeps at most {limit - slots} text tokens"
            )
        if self.config.label_attention == "decoupled" and self.config.label_positions == "reference":
            if layout.LABEL_START + self.num_labels > limit:
                raise ValueError(
                    f"label_positions='reference' places label i at position {layout.LABEL_START} + i, but "
                    f"{self.num_labels} labels exceed the encoder's {limit} positions; use label_positions='shared'"
                )

    def _embed(self, text_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Word embeddings of the text with the label rows injected (padded `[B, T]` or packed ids)."""
        words = self.transformer.get_input_embeddings()
        return ops.inject_label_embeddings(text_ids, words.weight, self.label_embeddings.weight,
                                           padding_idx=words.padding_idx, backend=self.config.ops_backend,
                                           cu_seqlens=cu_seqlens,
                                           check_values=False)  # ids checked in _text_inputs, offsets built here

    def _layout_inputs(self, text_ids, attention_mask, token_type_ids) -> dict:
        """Attention mask, position ids and token types `[B, T + N]` of the label-token sequence."""
        encoder_config = self.config.encoder
        spec = encoders.encoder_spec(encoder_config)
        position_ids = (layout.reference_position_ids if self.config.label_positions == "reference"
                        else layout.shared_position_ids)
        inputs = {
            "attention_mask": None if attention_mask is None else layout.insert_label_slots(attention_mask,
                                                                                            self.num_labels, 1),
            "position_ids": position_ids(text_ids, self.num_labels, spec.position_scheme, encoder_config.pad_token_id),
        }
        if spec.takes_token_type_ids:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(text_ids)
            inputs["token_type_ids"] = layout.insert_label_slots(token_type_ids, self.num_labels, 0)
        return inputs


def load_classifier(path: str | os.PathLike):
    """A trained model (ltc_fast or reference checkpoint) and its tokenizer, or a ValueError saying why not."""
    path = str(path)
    loading.check_trained_checkpoint(path)
    return AutoModelForTokenSequenceClassification.from_pretrained(path), prediction.saved_tokenizer(path)
