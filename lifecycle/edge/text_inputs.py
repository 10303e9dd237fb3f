"""Texts -> a text graph's feeds: the model's tokenizer (tokenizer.json, read by the `tokenizers` library)
and right-padding by hand. Predictor.logits never pads (it batches texts of equal length); padding is for
latency measurements and calibration (Predictor.encode). TextInputs is the inputs kind "text"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import TOKENIZER


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


class TextInputs:
    """Inputs kind "text": strings, tokenized with the model's tokenizer.json and truncated at max_length
    (lifecycle.edge.kinds names what every inputs kind has)."""

    def __init__(self, root: Path, schema: dict):
        self.max_length: int = schema["max_length"]
        self.tokenizer = load_tokenizer(Path(root) / TOKENIZER, self.max_length)

    def sample(self) -> str:
        return "warm-up"

    def recorded(self, entry: dict) -> str:
        return entry["text"]

    def feeds(self, predictor, texts: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        return predictor._feeds(self.tokenizer.encode_batch(list(texts)), pad_to)

    def outputs(self, predictor, texts: list, batch_size: int) -> np.ndarray:
        """Texts grouped by token count, only equal-length texts sharing a session call (see Predictor.logits)."""
        # Measured (issue 16: 300 news texts, max_length 128 (51 distinct token counts) and 32, requests
        # of 32 texts in three shuffles, one onnxruntime thread, the policies interleaved in one process):
        # - answers: fp32 and static int8 rows are bit-identical to the text alone when grouped (and,
        #   on these graphs, even when padded: masking is exact there, but nothing promises it for
        #   every graph); dynamic int8 rows move when co-batched, padded or grouped alike (up to 0.026
        #   in probability, 5 label flips in 900, bert-tiny at max_length 32), and are bit-identical
        #   one text per call.
        # - samples/s, padded to the longest of the batch -> grouped (dynamic: one per call; grouped):
        #   bert-tiny fp32 2472 -> 3566, static 2870 -> 3823, dynamic 3165 -> 3974 (4324);
        #   bert-small fp32 46 -> 61, static 85 -> 113, dynamic 118 -> 157 (160).
        #   Padding 32 news texts to the longest wastes more compute than the extra calls cost, and
        #   batching gains onnxruntime little on CPU: one call per text costs dynamic int8 2-8%.
        encs = self.tokenizer.encode_batch(list(texts))
        groups: dict[int, list[int]] = {}
        for i, e in enumerate(encs):
            groups.setdefault(len(e.ids), []).append(i)
        size = 1 if predictor.batch_dependent else max(1, batch_size)
        order, outs = [], []
        for rows in groups.values():
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                outs.append(predictor.session.run(None, predictor._feeds([encs[i] for i in chunk]))[0])
                order.extend(chunk)
        if not outs:
            return np.zeros((0, len(predictor.labels)), dtype=np.float32)
        stacked = np.concatenate(outs).astype(np.float32)  # float32 always: an fp16 graph may return half
        result = np.empty_like(stacked)
        result[order] = stacked
        return result
