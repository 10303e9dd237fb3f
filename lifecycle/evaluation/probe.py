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
    import numpy as np
    import torch

    body = model.base_model  # BertModel / GPT2Model: no LM head, whatever the wrapper
    body.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(body.device)
            hidden = body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
    return np.concatenate(out)


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


def transfer_callback(cfg: Probe, tokenizer, ctx):
    """A TrainerCallback that probes the model at each evaluation, on the validation split, and records
    {stage, step, perplexity, probe_accuracy} in ctx.details["transfer"] (the report plots them)."""
    import math

    from transformers import TrainerCallback

    task = ctx.data(cfg.data)
    points = ctx.details.setdefault("transfer", [])

    class TransferProbe(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics or model is None:
                return
            if points and points[-1]["stage"] == ctx.stage.label and points[-1]["step"] == state.global_step:
                return  # the final evaluation after training repeats the last step
            score = probe_accuracy(model, tokenizer, task, cfg, args.seed, split="validation")["probe_accuracy"]
            points.append({"stage": ctx.stage.label, "step": state.global_step,
                           "perplexity": math.exp(min(metrics["eval_loss"], 50.0)), "probe_accuracy": score})

    return TransferProbe()
