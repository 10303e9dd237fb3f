"""Linear probe: how much a frozen encoder's features already know about a labelled task.

Mean-pooled last hidden states (padding excluded) of the frozen model, standardised, then a logistic
regression fit on the task's train split and scored on its test split. Cheap enough to run after
every pre-training stage, so a gate can stop a pre-training run that made features worse.
"""

from __future__ import annotations

from pydantic import Field

from lifecycle.schema import Strict


class Probe(Strict):
    """A downstream probe run after (pre-)training; reports `probe_accuracy` (0..1)."""

    data: str = Field(description="name of a labelled source in `data`")
    max_length: int = Field(128, gt=0)  # tokens per text; longer texts are truncated
    limit: int | None = Field(2000, gt=0, description="at most this many texts per split (features cost a forward pass)")
    C: float = Field(1.0, gt=0)  # inverse L2 strength of the logistic regression
    # Also probe at every evaluation during training: the report's transfer plot (validation perplexity
    # against probe accuracy) shows whether lower loss bought better features. Costs one probe per eval.
    every_eval: bool = False


def features(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32):
    """Mean-pooled last hidden states of the model's encoder / decoder body, no gradients."""
    import torch

    from lifecycle.components.inference import batched

    body = model.base_model  # BertModel / GPT2Model: no LM head, whatever the wrapper

    def mean_pooled(enc):
        hidden = body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    body.eval()
    with torch.inference_mode():
        return batched(mean_pooled, tokenizer, texts, max_length, batch_size, device=body.device)


def probe_accuracy(model, tokenizer, data, cfg: Probe, seed: int = 0, split: str = "test") -> dict[str, float]:
    """`data` is `LabelledData`; the probe is fit on train and scored on `split`. Probes taken during
    training (which a person or an early stop may act on) use validation; test is scored once, at the end."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = data.splits["train"], data.splits[split]
    if cfg.limit:
        train = train.shuffle(seed=seed).select(range(min(cfg.limit, len(train))))
        test = test.select(range(min(cfg.limit, len(test))))
    was_training = model.training
    x_train = features(model, tokenizer, train["text"], cfg.max_length)
    x_test = features(model, tokenizer, test["text"], cfg.max_length)
    model.train(was_training)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=2000, random_state=seed))
    clf.fit(x_train, train["label"])
    return {"probe_accuracy": float(clf.score(x_test, test["label"]))}
