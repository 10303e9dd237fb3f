"""Texts -> a text graph's feeds: the model's tokenizer (tokenizer.json, read by the `tokenizers` library)
and right-padding by hand. Predictor.logits never pads (it batches texts of equal length); padding is for
latency measurements and calibration (Predictor.encode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_tokenizer(path: Path, max_length: int):
    """tokenizer.json, truncating at `max_length` and never padding itself."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()  # logits() never pads; encode() pads by hand (no shared state to toggle)
    return tokenizer


def token_counts(tokenizer, texts: list[str], max_length: int) -> list[int]:
    """Tokens per text before truncation; the tokenizer truncates at `max_length` again afterwards."""
    tokenizer.no_truncation()
    try:
        return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
    finally:
        tokenizer.enable_truncation(max_length)


def padded_feeds(encs: list, input_names: list[str], pad_id: int,
                 pad_to: int | None = None) -> dict[str, np.ndarray]:
    """The text inputs the graph has (input_ids, attention_mask, token_type_ids) for encodings, right-padded
    with `pad_id` to the longest (or to pad_to)."""
    length = max([pad_to or 1, *(len(e.ids) for e in encs)])  # an empty encoding still gets one position
    feeds = {name: np.zeros((len(encs), length), dtype=np.int64)
             for name in ("input_ids", "attention_mask", "token_type_ids") if name in input_names}
    if "input_ids" in feeds:
        feeds["input_ids"].fill(pad_id)
    for row, e in enumerate(encs):
        n = len(e.ids)
        for name, values in (("input_ids", e.ids), ("attention_mask", e.attention_mask),
                             ("token_type_ids", e.type_ids)):
            if name in feeds:
                feeds[name][row, :n] = values
    return feeds
