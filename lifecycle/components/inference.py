"""Batched PyTorch inference over texts: tokenize a slice, run the model, collect float32 numpy rows.
One loop for every caller (classifier logits, embeddings, probe features, dropout views); each caller
says what the forward pass returns and under which mode (eval / train, no-grad) it runs."""

from __future__ import annotations

from collections.abc import Callable

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def batched(forward: Callable, tokenizer, texts, max_length: int, batch_size: int = 64, device=None,
            inputs: tuple[str, ...] | None = None):
    """forward(encoding) -> (batch, ...) tensor, for consecutive slices of `texts` (padded per slice);
    the rows concatenated in input order as float32 numpy, or None for no texts. `device`: where the
    encoding goes; `inputs`: only these keys of the encoding are passed (default: all)."""
    import numpy as np

    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        if device is not None:
            enc = enc.to(device)
        feeds = {k: enc[k] for k in inputs if k in enc} if inputs is not None else enc
        out.append(forward(feeds).float().cpu().numpy())
    return np.concatenate(out) if out else None


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Logits of a sequence classifier over texts, in eval mode, no grad."""
    import torch

    model.eval()
    with torch.inference_mode():
        return batched(lambda enc: model(**enc).logits, tokenizer, texts, max_length, batch_size, device=model.device)


def logits_of(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Logits in input order, batched by length so little time goes into padding."""
    import numpy as np

    order = np.argsort([len(t) for t in texts], kind="stable")
    out = predict_logits(model, tokenizer, [texts[i] for i in order], max_length, batch_size)
    result = np.empty_like(out)
    result[order] = out
    return result


def embed_torch(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Embeddings (float32 numpy) of a `lifecycle.embedding.embedding_model`, eval mode, no grad."""
    import numpy as np
    import torch

    model.eval()
    with torch.inference_mode():
        out = batched(lambda enc: model(**enc), tokenizer, texts, max_length, batch_size, inputs=MODEL_INPUTS)
    return out if out is not None else np.zeros((0, model.config.hidden_size), dtype=np.float32)
