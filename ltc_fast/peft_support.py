"""PEFT (LoRA) on ltc_fast models: the `LoraConfig` that fits a model, and the check that no adapter sits where
the ops would skip it.

LoRA goes on the encoder's layers; the label table (`label_embeddings`) and the head (`classifier`) are new
weights and are trained whole, through peft's `modules_to_save`. The model's ops read `label_embeddings.weight`,
`classifier.weight` / `.bias` and the word embeddings' `.weight` directly instead of calling those modules:
a `modules_to_save` wrapper resolves `.weight` to its trained copy, so that works; an adapter layer that adds
its update in its own forward (LoRA on one of these three) would be skipped without a word, so the model
refuses it (`check_direct_weights`). peft itself is imported only by `lora_config`.
"""

from __future__ import annotations

from torch import nn

from . import encoders

MODULES_TO_SAVE = ("label_embeddings", "classifier")
ALL_LINEAR = "all-linear"


def lora_config(model, r: int = 8, target_modules=None, modules_to_save=(), **options):
    """A `peft.LoraConfig` for `model` (an `AutoModelForTokenSequenceClassification`): LoRA of rank `r` on
    `target_modules` of the encoder (default: the attention's query and value projections of its architecture;
    leaf names such as `["query", "key", "value", "dense"]`, or `"all-linear"` for every nn.Linear of the
    encoder), `label_embeddings` and `classifier` (plus `modules_to_save`) trained whole, `task_type="SEQ_CLS"`.
    Other `options` (`lora_alpha`, `lora_dropout`, `bias`, `use_rslora`, ...) go to `LoraConfig` as they are.
    Use it as `peft.get_peft_model(model, lora_config(model, r=8))`."""
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError('ltc_fast.peft_support needs peft: pip install "ltc-fast[peft]"') from error
    from .modeling import AutoModelForTokenSequenceClassification

    if not isinstance(model, AutoModelForTokenSequenceClassification):
        raise TypeError(f"lora_config takes the ltc_fast model itself (AutoModelForTokenSequenceClassification), "
                        f"before peft wraps it; got {type(model).__name__}")
    options.setdefault("task_type", "SEQ_CLS")
    return LoraConfig(r=r, target_modules=_encoder_targets(model, target_modules),
                      modules_to_save=list(dict.fromkeys([*MODULES_TO_SAVE, *modules_to_save])), **options)


def _encoder_targets(model, target_modules) -> list[str]:
    """Leaf names of the encoder's nn.Linear modules to put LoRA on, each checked to name at least one of them
    and nothing outside the encoder (peft matches a name against every module path's end)."""
    spec = encoders.encoder_spec(model.config.encoder)
    linear = {name.rsplit(".", 1)[-1] for name, module in model.transformer.named_modules()
              if isinstance(module, nn.Linear)}
    if target_modules is None:
        return list(spec.attention_projections)
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        return sorted(linear)
    if isinstance(target_modules, str) or not all(isinstance(name, str) for name in target_modules):
        raise ValueError(f"target_modules must be a list of module names (e.g. {list(spec.attention_projections)}) "
                         f"or {ALL_LINEAR!r}, got {target_modules!r}")
    for target in target_modules:
        paths = [path for path, module in model.named_modules()
                 if path == target or path.endswith("." + target)]
        outside = [path for path in paths if not path.startswith("transformer.")
                   or not isinstance(model.get_submodule(path), nn.Linear)]
        if not paths or outside:
            raise ValueError(
                f"target_modules entry {target!r} " + (f"matches {outside}, " if outside else "matches no module, ")
                + f"but LoRA on an ltc_fast model goes on the {model.config.encoder.model_type!r} encoder's nn.Linear "
                f"modules, here: {sorted(linear)} (or {ALL_LINEAR!r}). The label table and the head are trained "
                f"whole (modules_to_save {list(MODULES_TO_SAVE)}); the word embeddings are read directly by the "
                f"ops and cannot take LoRA (put them in modules_to_save to train them)")
    return list(target_modules)


def _skipped_adapter(module: nn.Module) -> bool:
    """Whether reading `module.weight` directly would miss an active, unmerged adapter on `module`."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    if "modules_to_save" in module._modules:  # peft's ModulesToSaveWrapper: `.weight` is the active copy's
        return False
    # Any other wrapper (a LoRA layer, trainable tokens...) computes with more than `.weight`, unless its update
    # is merged into it or switched off (peft's `merged` / `disable_adapters`).
    return not (getattr(module, "merged", False) or getattr(module, "disable_adapters", False))


def check_direct_weights(model) -> None:
    """A ValueError when an adapter sits on a module whose weights the ops read directly (see the module's doc)."""
    for name, module in (("classifier", model.classifier), ("label_embeddings", model.label_embeddings),
                         ("the encoder's word embeddings", model.transformer.get_input_embeddings())):
        if _skipped_adapter(module):
            raise ValueError(
                f"{type(module).__module__}.{type(module).__qualname__} on {name} is not supported: ltc_fast's ops read its weights directly, so "
                f"the adapter's update would be skipped. Put LoRA on the encoder's layers and train the label table "
                f"and the head whole (modules_to_save={list(MODULES_TO_SAVE)}): "
                f"peft.get_peft_model(model, ltc_fast.peft_support.lora_config(model)); or merge the adapter first")
