"""Masked-feature pre-training for table models (`pretrain` with `objective: masked-feature`): a share
of the cells of each row (`mlm_probability`) is replaced by a learned per-feature [MASK] token and the
encoder reconstructs them: mean-squared error on numbers (in their normalised units), cross-entropy on
categories. A missing cell is never a target (there is nothing to reconstruct), so missing values
stay what they are: the "missing" token, not a zero.

The encoder body (`features.*`, `bert.*`) is the one lifecycle.workloads.tables.model.TableTransformer has, so a finetune
stage loads it from this artifact with a new head; the heads and mask tokens stay behind. The artifact
keeps the preprocessing it was trained with (preprocessing.json): a finetune on another table of the same
columns reads that table through it, as a text model keeps its tokenizer.

Metrics on the held-out validation rows: `reconstruction_loss`, `numeric_rmse` (normalised units; 1.0
is what always predicting the training mean scores), `categorical_accuracy`; and a linear probe on the
source's target (logistic regression on frozen [CLS] states, scored on validation) before and after:
`probe_accuracy_init`, `probe_accuracy`, `probe_gain`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput, SequenceClassifierOutput

from lifecycle.workloads.tables.model import FeatureTokenizer, Rows, preset_config


class MaskedFeatureModel(BertPreTrainedModel):
    """TableTransformer's body plus per-feature reconstruction heads and mask tokens."""

    def __init__(self, config):
        super().__init__(config)
        n_num, cards = config.table["n_numeric"], config.table["cardinalities"]
        hidden = config.hidden_size
        self.features = FeatureTokenizer(n_num, cards, hidden)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.mask_token = nn.Parameter(torch.randn(n_num + len(cards), hidden) * hidden ** -0.5)
        self.numeric_head = nn.Parameter(torch.randn(n_num, hidden) * hidden ** -0.5)  # x_j ~ h_j . w_j + b_j
        self.numeric_bias = nn.Parameter(torch.zeros(n_num))
        self.category_head = nn.Linear(hidden, max(1, sum(cards)))
        owner = torch.cat([torch.full((c,), j) for j, c in enumerate(cards)]) if cards else torch.zeros(1)
        self.register_buffer("owner", owner.long(), persistent=False)  # which feature each category id is of
        self.post_init()

    def _init_weights(self, module):
        if not isinstance(module, FeatureTokenizer):
            super()._init_weights(module)

    def reconstruct(self, numeric, numeric_missing, categorical, masked):
        """(numeric predictions (batch, n_numeric), category logits (batch, n_categorical, all ids) with
        the ids of other features at -inf) for rows whose `masked` cells (batch, features; bool) are
        replaced by mask tokens."""
        tokens = self.features(numeric, numeric_missing, categorical)
        cells = torch.where(masked.unsqueeze(-1), self.mask_token.expand_as(tokens[:, 1:]), tokens[:, 1:])
        hidden = self.bert(inputs_embeds=torch.cat([tokens[:, :1], cells], 1)).last_hidden_state[:, 1:]
        n_num = numeric.shape[1]
        num_pred = (hidden[:, :n_num] * self.numeric_head).sum(-1) + self.numeric_bias
        cat_logits = self.category_head(hidden[:, n_num:])
        own = self.owner.unsqueeze(0) == torch.arange(cat_logits.shape[1], device=numeric.device).unsqueeze(1)
        return num_pred, cat_logits.masked_fill(~own, float("-inf"))  # each feature chooses among its own ids

    def forward(self, numeric, numeric_missing, categorical, masked, labels=None, **_):
        num_pred, cat_logits = self.reconstruct(numeric, numeric_missing, categorical, masked)
        num_target, cat_target = targets(numeric_missing, categorical, masked)
        losses = []
        if num_target.any():
            losses.append(((num_pred - numeric) ** 2)[num_target].mean())
        if cat_target.any():
            ids = categorical + self.features.offsets
            losses.append(nn.functional.cross_entropy(cat_logits[cat_target], ids[cat_target]))
        loss = torch.stack(losses).mean() if losses else num_pred.sum() * 0
        return MaskedLMOutput(loss=loss, logits=num_pred)


def targets(numeric_missing, categorical, masked):
    """The masked cells that have a value to reconstruct: (numeric, categorical) bool masks."""
    n_num = numeric_missing.shape[1]
    return masked[:, :n_num] & (numeric_missing == 0), masked[:, n_num:] & (categorical != 0)


class MaskedRows(Rows):
    """Rows with a fresh random mask per draw (at least one cell each), as the collator of masked-LM does."""

    def __init__(self, feeds: dict, fraction: float, seed: int):
        super().__init__(feeds, torch.zeros(len(feeds["numeric"])))
        self.fraction, self.generator = fraction, torch.Generator().manual_seed(seed)

    def __getitem__(self, i: int) -> dict:
        row = super().__getitem__(i)
        n = row["numeric"].shape[0] + row["categorical"].shape[0]
        masked = torch.rand(n, generator=self.generator) < self.fraction
        masked[torch.randint(n, (1,), generator=self.generator)] = True
        return {**row, "masked": masked}


@torch.inference_mode()
def reconstruction(model: MaskedFeatureModel, feeds: dict, fraction: float, seed: int) -> dict:
    """Loss, numeric RMSE and categorical accuracy on rows masked with a fixed seed (held-out rows)."""
    model.eval()
    data = MaskedRows(feeds, fraction, seed)
    batch = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("numeric", "numeric_missing",
                                                                             "categorical", "masked")}
    loss = float(model(**batch).loss)
    num_pred, cat_logits = model.reconstruct(**batch)
    num_target, cat_target = targets(batch["numeric_missing"], batch["categorical"], batch["masked"])
    rmse = float(((num_pred - batch["numeric"])[num_target] ** 2).mean().sqrt()) if num_target.any() else float("nan")
    right = cat_logits.argmax(-1) == batch["categorical"] + model.features.offsets
    accuracy = float(right[cat_target].float().mean()) if cat_target.any() else float("nan")
    found = {"reconstruction_loss": loss, "numeric_rmse": rmse, "categorical_accuracy": accuracy}
    return {k: v for k, v in found.items() if v == v}  # a table without numbers or categories has no such score


@torch.inference_mode()
def cls_states(model, feeds: dict):
    """Frozen [CLS] states (numpy) of the unmasked rows."""
    from lifecycle.workloads.tables.model import tensors

    model.eval()
    x = tensors(feeds)
    return model.bert(inputs_embeds=model.features(**x)).last_hidden_state[:, 0].numpy()


def linear_probe(model, data) -> float:
    """Logistic regression on frozen [CLS] states: fit on train, accuracy on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(cls_states(model, data.features("train")[0]), data.target("train"))
    return float(probe.score(cls_states(model, data.features("validation")[0]), data.target("validation")))


def pretrain(cfg, parent, ctx) -> tuple[dict, dict]:
    """The pretrain stage's masked-feature objective on the table source `cfg.data`."""
    import time

    from transformers import Trainer

    from lifecycle import LifecycleError, models
    from lifecycle.components.classification import seed_everything
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args

    data = ctx.data(cfg.data)
    if not hasattr(data, "preprocessing"):
        raise LifecycleError(f"pretrain: data '{cfg.data}' is not a table; `objective: masked-feature` reads a "
                             "table source (one with `table: {target: COLUMN}`)")
    seed_everything(ctx.seed)
    model = MaskedFeatureModel(preset_config(cfg.model, data.preprocessing))
    probe_init = linear_probe(model, data) if data.labels else None
    args = training_args(cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, eval_strategy="no", save_strategy="no")
    train = MaskedRows(data.features("train")[0], cfg.mlm_probability, ctx.seed)
    started = time.time()
    measured = run_trainer(Trainer(model=model, args=args, train_dataset=train), ctx.scratch_dir / "checkpoints", ctx)
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **reconstruction(model, data.features("validation")[0], cfg.mlm_probability, ctx.seed + 1),
               "train_seconds": time.time() - started, "params_total": models.count_parameters(model)["params_total"]}
    finish(model, data, ctx.out_dir, metrics, probe_init)
    return metrics, {"log_history": measured.log_history, "objective": "masked-feature",
                     "mask_fraction": cfg.mlm_probability, "schema": vars(data.schema)}


def finish(model, data, out_dir: Path, metrics: dict, probe_init: float | None) -> None:
    """What every table pre-training objective ends with: the probe after training beside the one before
    (into `metrics`), the model and the preprocessing it read, saved to the stage's directory."""
    import json

    from lifecycle.edge import PREPROCESSING

    if probe_init is not None:  # a probe on a classification target; a regression target has none
        metrics.update(probe_accuracy_init=probe_init, probe_accuracy=linear_probe(model, data))
        metrics["probe_gain"] = metrics["probe_accuracy"] - probe_init
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / PREPROCESSING).write_text(json.dumps(data.preprocessing, indent=2))


class AnomalyScorer(nn.Module):
    """A row's anomaly score from a masked-feature model: each feature is masked in turn and reconstructed
    from the others; the score is the mean reconstruction error over the features that have a value
    (squared error in normalised units for numbers, cross-entropy for categories). One forward pass over
    batch x features rows, so the whole score is inside the ONNX graph."""

    def __init__(self, model: MaskedFeatureModel):
        super().__init__()
        self.model, self.config = model, model.config
        # the feature counts are the table's, fixed: Python ints, so tracing keeps no tensor-valued branch
        self.numeric, self.categorical = model.config.table["n_numeric"], len(model.config.table["cardinalities"])
        self.register_buffer("eye", torch.eye(self.numeric + self.categorical, dtype=torch.bool), persistent=False)

    def forward(self, numeric, numeric_missing, categorical):
        batch, n = numeric.shape[0], self.eye.shape[0]

        def each(x, k):  # (batch, k) -> (batch * n, k): every row once per masked feature
            if k == 0:  # no such features: ONNX's Reshape reads a 0 as "keep that dim"
                return x.new_zeros((batch * n, 0))
            return x.unsqueeze(1).expand(batch, n, k).reshape(batch * n, k)

        masked = self.eye.unsqueeze(0).expand(batch, n, n).reshape(batch * n, n)
        num, missing, cat = each(numeric, self.numeric), each(numeric_missing, self.numeric), each(categorical, self.categorical)
        num_pred, cat_logits = self.model.reconstruct(num, missing, cat, masked)
        num_target, cat_target = targets(missing, cat, masked)
        num_err = ((num_pred - num) ** 2 * num_target).sum(-1)
        ids = (cat + self.model.features.offsets).unsqueeze(-1)
        nll = -torch.log_softmax(cat_logits, -1).gather(-1, ids).squeeze(-1)
        cat_err = (nll * cat_target).sum(-1)
        has_value = (num_target.sum(-1) + cat_target.sum(-1)).view(batch, n)
        err = (num_err + cat_err).view(batch, n)
        score = err.sum(1, keepdim=True) / has_value.sum(1, keepdim=True).clamp(min=1)
        return SequenceClassifierOutput(logits=score)
