"""Perplexity of language models, and the unigram baseline a pre-trained model must beat.

For a masked-LM the perplexity is exp(mean cross-entropy at the masked positions) of a validation set
whose masks were fixed once (`lifecycle.data.corpus.mask_for_eval`: 15% of tokens, all shown as
[MASK]), so two models, or one model before and after adaptation, are scored on the same positions. The unigram baseline predicts every
target token from its training-split frequency alone, scored at exactly those positions: a model that
does not beat it learned nothing from context.
"""

from __future__ import annotations

import math


def perplexity(loss: float) -> float:
    """exp(loss), or inf for an overflowing loss (a gate then fails instead of the stage crashing)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def targets(eval_blocks, objective: str):
    """The token ids a model is scored on: the masked positions (mlm) or every next token (clm)."""
    import numpy as np

    labels = np.asarray(eval_blocks["labels"])
    if objective == "clm":
        labels = labels[:, 1:]  # the first token of a block has no context to be predicted from
    return labels[labels != -100]


def unigram_perplexity(train_blocks, eval_blocks, objective: str, vocab_size: int, special_ids=()) -> float:
    """Perplexity of add-one-smoothed unigram frequencies (from the training blocks) on the targets.
    For masked-LM, pass the special token ids: they are never masked, so never a target."""
    import numpy as np

    ids = np.asarray(train_blocks["input_ids"]).ravel()
    if objective == "mlm":
        ids = ids[~np.isin(ids, list(special_ids))]
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-log_p[targets(eval_blocks, objective)].mean()))
