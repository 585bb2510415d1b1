"""Loading a model: an ltc_fast checkpoint, a saved reference checkpoint, or a plain encoder with a new head and
label table (and their label initialisation). `AutoModelForTokenSequenceClassification.from_pretrained` is
`load_pretrained` here; conversion of the weights themselves lives in `checkpoints`."""

from __future__ import annotations

import copy
import os
import re

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from . import checkpoints, encoders
from .config import EXECUTION_OPTIONS, LtcConfig, normalize_problem_type, resolve_label_names, with_encoder_labels


def check_trained_checkpoint(path: str) -> None:
    """A ValueError unless `path` holds a trained classifier: an ltc_fast or a reference checkpoint."""
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path!r} is not an ltc_fast or reference checkpoint: no readable config.json "
                         f"({str(error).splitlines()[0]})") from None
    if not isinstance(config, LtcConfig) and not checkpoints.is_reference_checkpoint(path):
        raise ValueError(f"{path!r} is not an ltc_fast or reference checkpoint: it holds a {config.model_type!r} "
                         f"model without a trained label head (train one with `ltc-fast train --model {path}`)")


def load_pretrained(
    model_class,
    pretrained_model_name_or_path: str | os.PathLike,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    problem_type: str | None = None,
    label_init: str = "random",
    hidden_layer: int = -1,
    label_head_dropout: float = 0.1,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    **encoder_config_overrides,
) -> PreTrainedModel:
    """`model_class.from_pretrained`: load an ltc_fast checkpoint, a saved reference checkpoint (label rows at
    the end of the word embeddings; `pytorch_model.bin` or safetensors) or a plain encoder (a new head and label
    table, initialised by `label_init`: random | avg | label_name | cls).

    The execution options of `LtcConfig` (`label_positions`, `label_attention`, `label_chunk_size`,
    `sampled_negatives`, `negative_sampling`, `sequence_packing`, `ops_backend`) are accepted here too
    (for an ltc_fast checkpoint they replace the saved values); any other keyword (e.g.
    `hidden_dropout_prob=0.0`) updates the encoder's config.
    """
    path = str(pretrained_model_name_or_path)
    # `config=`: an LtcConfig replaces the saved one; an encoder config (as the reference's training script
    # builds it: AutoConfig.from_pretrained(path, num_labels=N, problem_type=...)) replaces the encoder's,
    # and its labels are the model's unless num_labels / label_names / problem_type say otherwise.
    given = encoder_config_overrides.pop("config", None)
    found = AutoConfig.from_pretrained(path) if given is None else copy.deepcopy(given)
    if given is not None and not isinstance(given, LtcConfig):
        num_labels, label_names, problem_type = with_encoder_labels(given, num_labels, label_names, problem_type)
    execution = {k: encoder_config_overrides.pop(k) for k in EXECUTION_OPTIONS if k in encoder_config_overrides}
    execution = {k: v for k, v in execution.items() if v is not None}  # None: keep the saved / default value
    for key, value in encoder_config_overrides.items():
        setattr(found.encoder if isinstance(found, LtcConfig) else found, key, value)
    if isinstance(found, LtcConfig):
        if execution:
            found = LtcConfig(**{**found.to_dict(), **execution})  # validated like a new config
        model = _from_ltc_checkpoint(model_class, path, found, num_labels, label_names, problem_type)
    else:
        options = dict(problem_type=problem_type, label_init=label_init, hidden_layer=hidden_layer,
                       label_head_dropout=label_head_dropout, **execution)
        if checkpoints.is_reference_checkpoint(path):
            model = _from_reference_checkpoint(model_class, path, found, num_labels, label_names, options)
        else:
            model = _from_encoder(model_class, path, found, num_labels, label_names, options, tokenizer)
    model.name_or_path = model.config._name_or_path = path  # where `predict` finds the saved tokenizer
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)  # HF's own switch, sub-models included
    dtype = resolve_dtype(dtype, found)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def resolve_dtype(dtype, config) -> torch.dtype | None:
    """`dtype` as transformers' loaders take it: a torch.dtype, its name (`"bfloat16"`), or `"auto"` (the
    dtype the checkpoint's config records, as `pipeline()` asks for; float32 when it records none)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        saved = getattr(config, "dtype", None) or getattr(getattr(config, "encoder", None), "dtype", None)
        return resolve_dtype(saved, config) if saved not in (None, "auto") else None
    named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(named, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, its name (e.g. 'bfloat16') or 'auto', got {dtype!r}")
    return named

def _from_ltc_checkpoint(model_class, path, config, num_labels, label_names, problem_type):
    if num_labels is not None and num_labels != config.num_labels:
        raise ValueError(f"num_labels={num_labels} disagrees with the checkpoint at {path!r}, which has "
                         f"{config.num_labels} labels")
    if label_names is not None and list(label_names) != config.label_names:
        raise ValueError(f"label_names disagree with the checkpoint at {path!r}: given {list(label_names)}, "
                         f"saved {config.label_names}")
    if problem_type is not None:
        config.problem_type = normalize_problem_type(problem_type)
    model = model_class(config)
    model.load_state_dict(checkpoints.load_state_dict(path), strict=True)
    return model

def _from_reference_checkpoint(model_class, path, encoder_config, num_labels, label_names, options):
    saved_names = checkpoints.reference_label_names(encoder_config)
    if label_names is None and num_labels in (None, len(saved_names)) and saved_names:
        label_names = saved_names
    names = resolve_label_names(num_labels, label_names)
    state = checkpoints.from_reference_state_dict(checkpoints.load_state_dict(path), len(names))
    encoder_config.vocab_size = state[checkpoints.word_embeddings_key(state)].shape[0]
    if options["problem_type"] is None:
        options["problem_type"] = encoder_config.problem_type
    model = model_class(LtcConfig(encoder=encoder_config, label_names=names, **options))
    # Weights of encoder layers above `hidden_layer` are not part of the model; nothing else may be left.
    kept_layers = encoders.num_layers(model.config.encoder)
    layer_index = re.compile(rf"^transformer\.{re.escape(encoders.encoder_spec(encoder_config).layers_path)}\.(\d+)\.")
    above = [k for k in state if (m := layer_index.search(k)) and int(m.group(1)) >= kept_layers]
    model.load_state_dict({k: v for k, v in state.items() if k not in above}, strict=True)
    return model

def _from_encoder(model_class, path, encoder_config, num_labels, label_names, options, tokenizer):
    # a config.json that carries its labels, as a classifier's does
    num_labels, label_names, options["problem_type"] = with_encoder_labels(encoder_config, num_labels, label_names,
                                                                           options["problem_type"])
    config = LtcConfig(encoder=encoder_config, label_names=resolve_label_names(num_labels, label_names),
                       **options)
    model = model_class(config)
    pooler_kwargs = {"add_pooling_layer": False} if encoders.encoder_spec(config.encoder).has_pooler else {}
    model.transformer = AutoModel.from_pretrained(path, config=config.encoder, **pooler_kwargs)
    model._use_ltc_attention()
    if config.label_init in ("label_name", "cls") and tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    model.init_label_embeddings(config.label_init, tokenizer)
    return model

@torch.no_grad()
def init_label_embeddings(model, method: str, tokenizer=None) -> None:
    """Set every label row: `random` N(0, initializer_range), `avg` the mean word embedding of the
    vocabulary, `label_name` the mean embedding of the label name's word pieces, `cls` the [CLS] row."""
    words = model.transformer.get_input_embeddings().weight
    rows = model.label_embeddings.weight
    if method == "random":
        rows.normal_(mean=0.0, std=model.config.initializer_range)
    elif method == "avg":
        rows.copy_(words.float().mean(dim=0).expand_as(rows))
    elif method == "cls":
        if tokenizer is None or tokenizer.cls_token_id is None:
            raise ValueError("label_init='cls' needs a tokenizer with a cls_token (pass tokenizer=...)")
        rows.copy_(words[tokenizer.cls_token_id].expand_as(rows))
    elif method == "label_name":
        rows.copy_(_label_name_embeddings(model.config.label_names, words, tokenizer))
    else:
        raise ValueError(f"label_init must be one of random, avg, label_name, cls; got {method!r}")
    model.config.label_init = method

def _label_name_embeddings(names: list[str], words: torch.Tensor, tokenizer) -> torch.Tensor:
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
