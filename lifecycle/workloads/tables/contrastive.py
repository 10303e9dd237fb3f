"""Contrastive pre-training for table models (`pretrain` with `objective: contrastive` on a table source):
SCARF (Bahri et al., ICLR 2022). Each training row is paired with a corrupted copy of itself, in which a
share of its features (`contrastive.corruption`, SCARF's 0.6 by default) takes the value of the same
feature in another random training row, i.e. a draw from that feature's empirical marginal (a missing
cell travels as missing, a category as its id). The mean of the encoder's output tokens, through a
two-layer projection, must pick its row's copy out of the batch (InfoNCE, in-batch negatives,
lifecycle.workloads.text.contrastive). Measured on palmerpenguins (15 epochs, tests/test_tabular.py's budget): the
[CLS] state barely depends on the row at initialisation and held-out loss stayed at chance with it; with
the mean, held-out top-1 was 0.23 at temperature 0.1 and 0.11 at SCARF's 1.0 (chance 0.06; with cosine
logits in [-1, 1] a temperature of 1 bounds the loss near log b), so `contrastive.temperature` keeps
its default (0.05, as for text).

Why marginal draws rather than masking: the corrupted cell is a plausible value, so the encoder cannot
spot corruption from a token it never sees at fine-tuning time, which is the trade-off SCARF measured
against mask-based views. The body (`features.*`, `bert.*`) is lifecycle.workloads.tables.model.TableTransformer's,
so a finetune stage loads it with a new head; the projection stays behind, as in SimCLR.

Metrics on held-out validation rows (fixed corruption): `contrastive_loss` and `contrastive_top1` (the
share of rows whose nearest corrupted copy in the batch is their own), each beside its chance level and the linear probe on frozen [CLS] states before/after
(`probe_accuracy_init`, `probe_accuracy`, `probe_gain`), as masked-feature pre-training reports.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from lifecycle.workloads.tables.model import INPUTS, FeatureTokenizer, Rows, preset_config

CORRUPTION = 0.6  # SCARF's default share of corrupted features
TEXT_ONLY = ("mode", "max_length", "pairs", "eval_texts", "pooling")  # Contrastive fields a table cannot use


class ScarfModel(BertPreTrainedModel):
    """TableTransformer's body plus SCARF's projection head; forward takes a row and its corrupted copy
    (`positive_*` inputs) and returns the InfoNCE loss."""

    def __init__(self, config):
        super().__init__(config)
        table, hidden = config.table, config.hidden_size
        self.features = FeatureTokenizer(table["n_numeric"], table["cardinalities"], hidden)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.post_init()

    def _init_weights(self, module):
        if not isinstance(module, FeatureTokenizer):  # it initialises itself
            super()._init_weights(module)

    def embed(self, numeric, numeric_missing, categorical):
        states = self.bert(inputs_embeds=self.features(numeric, numeric_missing, categorical)).last_hidden_state
        return self.projection(states.mean(1))

    def forward(self, numeric, numeric_missing, categorical, positive_numeric, positive_numeric_missing,
                positive_categorical, labels=None, **_):
        from lifecycle.embedding import info_nce

        anchors = self.embed(numeric, numeric_missing, categorical)
        positives = self.embed(positive_numeric, positive_numeric_missing, positive_categorical)
        return SequenceClassifierOutput(loss=info_nce(anchors, positives, self.config.scarf_temperature),
                                        logits=anchors)


class CorruptedRows(Rows):
    """Each row with a fresh corrupted copy per draw: every feature is corrupted with probability
    `corruption` (at least one per row), taking its value from one other random row."""

    def __init__(self, feeds: dict, corruption: float, seed: int):
        super().__init__(feeds, torch.zeros(len(feeds["numeric"])))
        self.corruption, self.generator = corruption, torch.Generator().manual_seed(seed)
        self.n_numeric = self.x["numeric"].shape[1]

    def __getitem__(self, i: int) -> dict:
        row = super().__getitem__(i)
        n_rows, n = len(self), self.n_numeric + row["categorical"].shape[0]
        corrupt = torch.rand(n, generator=self.generator) < self.corruption
        corrupt[torch.randint(n, (1,), generator=self.generator)] = True
        donors = torch.randint(n_rows, (n,), generator=self.generator)  # one donor row per feature
        num, cat = corrupt[: self.n_numeric], corrupt[self.n_numeric :]
        cols_num, cols_cat = torch.arange(self.n_numeric), torch.arange(n - self.n_numeric)
        positive = {
            "numeric": torch.where(num, self.x["numeric"][donors[: self.n_numeric], cols_num], row["numeric"]),
            "numeric_missing": torch.where(num, self.x["numeric_missing"][donors[: self.n_numeric], cols_num],
                                           row["numeric_missing"]),
            "categorical": torch.where(cat, self.x["categorical"][donors[self.n_numeric :], cols_cat],
                                       row["categorical"]),
        }
        return {**row, **{f"positive_{k}": v for k, v in positive.items()}}


@torch.inference_mode()
def held_out(model: ScarfModel, feeds: dict, corruption: float, seed: int, batch_size: int) -> dict:
    """On held-out rows with a fixed corruption, in batches of `batch_size`: lifecycle.embedding.retrieval_scores
    (the mean InfoNCE loss and top-1 retrieval of each row's corrupted copy, beside their chance levels)."""
    from lifecycle.embedding import retrieval_scores

    model.eval()
    rows = CorruptedRows(feeds, corruption, seed)
    items = [rows[i] for i in range(len(rows))]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "labels"}
    anchors = model.embed(batch["numeric"], batch["numeric_missing"], batch["categorical"])
    positives = model.embed(batch["positive_numeric"], batch["positive_numeric_missing"], batch["positive_categorical"])
    return retrieval_scores(anchors, positives, model.config.scarf_temperature, batch_size)


def pretrain(cfg, parent, ctx) -> tuple[dict, dict]:
    """The pretrain stage's contrastive objective on the table source `cfg.data`."""
    import time

    from transformers import Trainer

    from lifecycle import LifecycleError, models
    from lifecycle.components.classification import seed_everything
    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args
    from lifecycle.embedding import Contrastive
    from lifecycle.workloads.tables.masked_features import finish, linear_probe

    settings = cfg.contrastive
    given = [f for f in TEXT_ONLY if settings is not None and f in settings.model_fields_set]
    if given:
        raise LifecycleError(f"pretrain.contrastive.{given[0]}: a text setting; a table's contrastive objective "
                             "(SCARF) takes `corruption` and `temperature`")
    corruption = settings.corruption if settings is not None and settings.corruption is not None else CORRUPTION
    temperature = (settings or Contrastive()).temperature
    data = ctx.data(cfg.data)
    config = preset_config(cfg.model, data.preprocessing)
    config.update({"scarf_temperature": temperature})
    seed_everything(ctx.seed)
    model = ScarfModel(config)
    probe_init = linear_probe(model, data) if data.labels else None
    args = training_args(cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, eval_strategy="no", save_strategy="no")
    train = CorruptedRows(data.features("train")[0], corruption, ctx.seed)
    started = time.time()
    measured = run_trainer(Trainer(model=model, args=args, train_dataset=train), ctx.scratch_dir / "checkpoints", ctx)
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **held_out(model, data.features("validation")[0], corruption, ctx.seed + 1, cfg.train.batch_size),
               "train_seconds": time.time() - started, "params_total": models.count_parameters(model)["params_total"]}
    finish(model, data, ctx.out_dir, metrics, probe_init)
    return metrics, {"log_history": measured.log_history, "objective": "contrastive (SCARF)", "corruption": corruption,
                     "temperature": temperature, "schema": vars(data.schema), "inputs": list(INPUTS)}
