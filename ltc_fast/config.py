"""`LtcConfig`: the encoder's own config plus what the label-token head needs."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from . import encoders

MULTI_LABEL = "multi_label_classification"
SINGLE_LABEL = "single_label_classification"
_PROBLEM_TYPE_ALIASES = {"multi": MULTI_LABEL, "multi_label": MULTI_LABEL, MULTI_LABEL: MULTI_LABEL,
                         "single": SINGLE_LABEL, "single_label": SINGLE_LABEL, SINGLE_LABEL: SINGLE_LABEL}
LABEL_INITS = ("random", "avg", "label_name", "cls")
# The defaults reproduce the reference. "shared": every label at one position id, the text after it as if
# there were one label (any N, label order irrelevant). "decoupled": the text attends only the text, each
# label the text and itself (labels independent of each other: chunked scoring, label sampling).
LABEL_POSITIONS = ("reference", "shared")
LABEL_ATTENTIONS = ("full", "decoupled")
# "auto": unpadded (packed) execution where it pays off (padding present, and the packed attention runs fused or
# it is CPU inference: attention.packing_pays); "packed" / "padded" force it.
SEQUENCE_PACKING = ("auto", "packed", "padded")
NEGATIVE_SAMPLING = ("uniform", "score")
# Options that choose how the model runs rather than what it learned; from_pretrained accepts them.
EXECUTION_OPTIONS = ("label_positions", "label_attention", "label_chunk_size", "sampled_negatives",
                     "negative_sampling", "sequence_packing", "ops_backend", "check_inputs")
# "auto": each op's fast kernel where it applies (Triton on CUDA, the C++ loss extension when built);
# "torch": the plain-PyTorch twins everywhere (also forced by LTC_FAST_BACKEND=torch).
OPS_BACKENDS = ("auto", "torch")


def normalize_problem_type(problem_type: str | None) -> str:
    if problem_type is None:
        return MULTI_LABEL
    if problem_type not in _PROBLEM_TYPE_ALIASES:
        raise ValueError(
            f"problem_type must be one of {sorted(set(_PROBLEM_TYPE_ALIASES))}, got {problem_type!r}"
        )
    return _PROBLEM_TYPE_ALIASES[problem_type]


def resolve_label_names(num_labels: int | None, label_names) -> list[str]:
    """Validate `num_labels` / `label_names` together and return the label names."""
    if label_names is None:
        if num_labels is None:
            raise ValueError("give num_labels (an int >= 1) or label_names (a list of names); got neither")
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
        return [f"LABEL_{i}" for i in range(num_labels)]
    if isinstance(label_names, str):
        raise ValueError(f"label_names must be a list of strings, got the single string {label_names!r}")
    label_names = list(label_names)
    if not label_names:
        raise ValueError("label_names must hold at least one name, got an empty list")
    for i, name in enumerate(label_names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"label_names[{i}] must be a non-empty string, got {name!r}")
    seen: dict[str, int] = {}
    for i, name in enumerate(label_names):
        if name in seen:
            raise ValueError(f"label_names must be unique: {name!r} is at index {seen[name]} and at index {i}")
        seen[name] = i
    if num_labels is not None and num_labels != len(label_names):
        raise ValueError(
            f"num_labels={num_labels} disagrees with label_names, which holds {len(label_names)} names"
        )
    return label_names


def validate_label_thresholds(thresholds, num_labels: int) -> list[float] | None:
    """Per-label decision thresholds: None, or `num_labels` floats strictly between 0 and 1."""
    if thresholds is None:
        return None
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__len__"):
        raise ValueError(f"label_thresholds must be a list of {num_labels} floats in (0, 1), got {thresholds!r}")
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != num_labels:
        raise ValueError(f"label_thresholds must hold one threshold per label ({num_labels}), got {len(thresholds)}")
    bad = [(i, t) for i, t in enumerate(thresholds) if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"label_thresholds must lie in (0, 1); label {bad[0][0]} has {bad[0][1]}")
    return thresholds


def encoder_label_options(encoder_config: PretrainedConfig) -> dict:
    """The labels an encoder config carries, read as transformers' sequence classifiers read them: `label_names`
    (from `id2label`; `num_labels` alone where the names are transformers' placeholders LABEL_i) and
    `problem_type`. {} for transformers' default of two placeholder labels and no problem type, which says
    nothing about the labels."""
    count = encoder_config.num_labels
    names = [encoder_config.id2label[i] for i in range(count)]
    problem_type = getattr(encoder_config, "problem_type", None)
    placeholders = names == [f"LABEL_{i}" for i in range(count)]
    if placeholders and count == 2 and problem_type is None:
        return {}
    options = {"num_labels": count} if placeholders else {"label_names": names}
    return {**options, **({"problem_type": problem_type} if problem_type is not None else {})}


def with_encoder_labels(encoder_config: PretrainedConfig, num_labels, label_names, problem_type):
    """(num_labels, label_names, problem_type): the encoder config's own labels where the caller gave none,
    its problem type where the caller gave none."""
    if num_labels is None and label_names is None:
        carried = encoder_label_options(encoder_config)
        num_labels, label_names = carried.get("num_labels"), carried.get("label_names")
        problem_type = problem_type if problem_type is not None else carried.get("problem_type")
    return num_labels, label_names, problem_type


class LtcConfig(PretrainedConfig):
    """Config of `AutoModelForTokenSequenceClassification`.

    `encoder` is the wrapped encoder's config (saved as a nested dict). `id2label` holds the label names,
    `num_labels` follows from it. `hidden_layer` is resolved at construction: the encoder config keeps only
    the layers up to the chosen one, so a saved model reloads with the same depth. `label_thresholds`
    (optional, one per label) are the multi-label decision thresholds prediction uses by default.
    `check_inputs` (default True): forward checks the values of `input_ids` and `labels` and recognises
    reference-format ids, reading them once per call (one host sync on a GPU); False skips that read, and
    then `input_ids` must be plain text ids in the vocabulary and `labels` valid (out-of-range ids give NaN
    embeddings on the Triton path, a device assert on the torch path).
    """

    model_type = "ltc_fast"
    # Trainer.predict / evaluate hand compute_metrics the logits alone, as for any classifier.
    keys_to_ignore_at_inference = ["probas", "hidden_states", "attentions"]
    sub_configs = {"encoder": AutoConfig}

    def __init__(
        self,
        encoder: PretrainedConfig | dict | None = None,
        label_names: list[str] | None = None,
        problem_type: str | None = None,
        label_init: str = "random",
        hidden_layer: int = -1,
        label_head_dropout: float = 0.1,
        label_positions: str = "reference",
        label_attention: str = "full",
        ops_backend: str = "auto",
        sequence_packing: str = "auto",
        label_chunk_size: int | None = None,
        sampled_negatives: int | None = None,
        negative_sampling: str = "uniform",
        label_thresholds: list[float] | None = None,
        check_inputs: bool = True,
        **kwargs,
    ):
        if isinstance(encoder, dict):
            encoder = dict(encoder)
            encoder = AutoConfig.for_model(encoder.pop("model_type"), **encoder)
        if encoder is not None:
            encoders.encoder_spec(encoder)  # clear error on unsupported architectures
            hidden_layer = _truncate_to_hidden_layer(encoder, hidden_layer)
        self.encoder = encoder
        num_labels = kwargs.pop("num_labels", None)
        if encoder is not None and "id2label" not in kwargs:
            # An encoder config built the way transformers' classifiers are (num_labels / id2label and
            # problem_type on it), as the reference takes it: its labels are the model's.
            num_labels, label_names, problem_type = with_encoder_labels(encoder, num_labels, label_names,
                                                                        problem_type)
        if label_names is not None or num_labels is not None:
            names = resolve_label_names(num_labels, label_names)
            kwargs["id2label"] = dict(enumerate(names))
            kwargs["label2id"] = {name: i for i, name in enumerate(names)}
        problem_type = normalize_problem_type(problem_type)
        if label_init not in LABEL_INITS:
            raise ValueError(f"label_init must be one of {LABEL_INITS}, got {label_init!r}")
        if not 0.0 <= float(label_head_dropout) < 1.0:
            raise ValueError(f"label_head_dropout must be in [0, 1), got {label_head_dropout!r}")
        if label_positions not in LABEL_POSITIONS:
            raise ValueError(f"label_positions must be one of {LABEL_POSITIONS}, got {label_positions!r}")
        if label_attention not in LABEL_ATTENTIONS:
            raise ValueError(f"label_attention must be one of {LABEL_ATTENTIONS}, got {label_attention!r}")
        if encoder is not None and (label_positions, label_attention) != ("reference", "full"):
            spec = encoders.encoder_spec(encoder)
            if not spec.positions_from_ids:
                raise ValueError(
                    f"label_positions={label_positions!r} / label_attention={label_attention!r} need an encoder with "
                    f"positions from position ids (absolute or rotary) and transformers' AttentionInterface "
                    f"({', '.join(encoders.modes_supported())}); "
                    f"{encoder.model_type!r} uses relative positions: use label_positions='reference', label_attention='full'"
                )
        if sequence_packing not in SEQUENCE_PACKING:
            raise ValueError(f"sequence_packing must be one of {SEQUENCE_PACKING}, got {sequence_packing!r}")
        for name, value in (("label_chunk_size", label_chunk_size), ("sampled_negatives", sampled_negatives)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if (label_chunk_size or sampled_negatives) and label_attention != "decoupled":
            raise ValueError(
                "label_chunk_size and sampled_negatives need label_attention='decoupled' (only then is a label's "
                f"logit independent of the other labels); got label_attention={label_attention!r}"
            )
        if negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {negative_sampling!r}")
        if ops_backend not in OPS_BACKENDS:
            raise ValueError(f"ops_backend must be one of {OPS_BACKENDS}, got {ops_backend!r}")
        if not isinstance(check_inputs, bool):
            raise ValueError(f"check_inputs must be True or False, got {check_inputs!r}")
        self.label_init = label_init
        self.ops_backend = ops_backend
        # True: forward reads the values of input_ids / labels once per call (a host sync on a GPU) for clear
        # errors and to recognise reference-format ids; False: no sync, input_ids must be plain text ids.
        self.check_inputs = check_inputs
        self.sequence_packing = sequence_packing
        self.label_chunk_size = label_chunk_size
        self.sampled_negatives = sampled_negatives
        self.negative_sampling = negative_sampling
        self.hidden_layer = hidden_layer
        self.label_head_dropout = float(label_head_dropout)
        self.label_positions = label_positions
        self.label_attention = label_attention
        count = len(kwargs.get("id2label") or {})
        if problem_type == SINGLE_LABEL and count == 1:
            raise ValueError(
                f"problem_type={SINGLE_LABEL!r} needs num_labels >= 2 (softmax over one label is constant), "
                f"got num_labels=1; use {MULTI_LABEL!r} for a single yes/no label"
            )
        if label_thresholds is not None and problem_type != MULTI_LABEL:
            raise ValueError(f"label_thresholds apply to {MULTI_LABEL!r} only, the problem type is {problem_type!r}")
        self.label_thresholds = validate_label_thresholds(label_thresholds, count)
        super().__init__(problem_type=problem_type, **kwargs)

    @property
    def label_names(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size if hasattr(self.encoder, "hidden_size") else self.encoder.dim

    @property
    def initializer_range(self) -> float:
        return getattr(self.encoder, "initializer_range", 0.02)


def _truncate_to_hidden_layer(encoder: PretrainedConfig, hidden_layer: int) -> int:
    """Keep only the encoder layers up to `hidden_layer` (an index into `hidden_states`, 0 = embeddings)
    and return -1, the index of the new last layer. Layers above it would never be used. (A pre-norm encoder,
    ModernBERT, then applies its final norm to layer `hidden_layer`, as it does to its last layer.)"""
    total = encoders.num_layers(encoder)
    if not isinstance(hidden_layer, int) or isinstance(hidden_layer, bool):
        raise ValueError(f"hidden_layer must be an int, got {hidden_layer!r}")
    keep = hidden_layer if hidden_layer >= 0 else total + 1 + hidden_layer
    if not 1 <= keep <= total:
        raise ValueError(
            f"hidden_layer must select one of the encoder's {total} layers (1..{total}, or -{total}..-1 from "
            f"the top; 0 would be the embeddings, which have not seen the text), got {hidden_layer}"
        )
    encoders.set_num_layers(encoder, keep)
    return -1
