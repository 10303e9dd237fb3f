"""A feature-tokenizer transformer for tables (FT-Transformer, Gorishniy et al. 2021): every feature
becomes one token, a [CLS] token is prepended, a transformer encoder mixes them, the head reads [CLS].

Why a transformers `BertModel` fed through `inputs_embeds` and not `rtdl-revisiting-models`: the model
is then a Hugging Face model (config.json + safetensors, `save_pretrained`/`from_pretrained`), so peft's
LoRA finds its `query`/`value` layers, the Trainer trains it, and torch.onnx exports it the way it
exports our text encoders, with no second code path for checkpoints, adapters or export. rtdl's
FTTransformer is a plain nn.Module with no missing-value token and no config. The feature tokenizer
(what rtdl adds over a plain encoder) is ~30 lines here. Not measured against rtdl yet.

Inputs (lifecycle.edge.TablePreprocessing makes them from raw rows, the same code everywhere):
`numeric` (batch, n_numeric) float32, `numeric_missing` (batch, n_numeric) float32 0/1, `categorical`
(batch, n_categorical) int64 (0 missing, 1 unknown, 2.. vocabulary). A missing number takes a learned
per-feature "missing" token, so it is never read as the value 0 (the training mean).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

INPUTS = ("numeric", "numeric_missing", "categorical")  # the graph's inputs, in this order
SIZES = {  # presets: (layers, hidden, heads); FT-Transformer's default is 3 x 192 with 8 heads
    "ft-tiny": (2, 32, 2),
    "ft-small": (3, 64, 4),
    "ft-base": (3, 192, 8),
}


def table_config(preprocessing: dict, num_labels: int, size: str = "ft-tiny", dropout: float = 0.1) -> BertConfig:
    """A BertConfig for the table described by `preprocessing` (lifecycle.data.tables.fit_preprocessing):
    the feature counts and category vocabulary sizes are stored in it, so the checkpoint alone rebuilds
    the tokenizer. `num_labels` 1: regression."""
    layers, hidden, heads = SIZES[size]
    n_features = len(preprocessing["numeric"]) + len(preprocessing["categorical"])
    return BertConfig(
        vocab_size=1,  # no word embeddings are read: the feature tokenizer writes inputs_embeds
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden * 4 // 3 * 2,
        max_position_embeddings=n_features + 1, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
        table={"n_numeric": len(preprocessing["numeric"]),
               "cardinalities": [len(c["vocabulary"]) + 2 for c in preprocessing["categorical"]]},
    )


def preset_config(source, preprocessing: dict, num_labels: int = 2) -> BertConfig:
    """table_config with the sizes of a ModelSource's `preset` (and its overrides), as lifecycle.models
    declares them; positions are one per feature, set from the table."""
    from lifecycle import models

    fields = {**models.PRESETS[source.preset](), **source.overrides}
    for key in ("family", "max_position_embeddings"):
        fields.pop(key, None)
    config = table_config(preprocessing, num_labels)
    config.update(fields)
    return config


class FeatureTokenizer(nn.Module):
    """One token per feature: numeric x -> x * w_j + b_j (or the feature's missing token), categorical
    c -> E_j[c] + b_j; [CLS] first."""

    def __init__(self, n_numeric: int, cardinalities: list[int], hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_numeric, hidden))
        self.bias = nn.Parameter(torch.empty(n_numeric, hidden))
        self.missing = nn.Parameter(torch.empty(n_numeric, hidden))
        self.categories = nn.Embedding(max(1, sum(cardinalities)), hidden)
        self.category_bias = nn.Parameter(torch.empty(len(cardinalities), hidden))
        starts = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0) if cardinalities else torch.zeros(0)
        self.register_buffer("offsets", starts.long(), persistent=False)
        self.cls = nn.Parameter(torch.empty(1, 1, hidden))
        bound = hidden ** -0.5  # rtdl's initialisation: uniform(-1/sqrt(d), 1/sqrt(d))
        for p in (self.weight, self.bias, self.missing, self.category_bias, self.cls, self.categories.weight):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, numeric, numeric_missing, categorical):
        m = numeric_missing.unsqueeze(-1)
        num = (numeric.unsqueeze(-1) * self.weight + self.bias) * (1 - m) + self.missing * m
        cat = self.categories(categorical + self.offsets) + self.category_bias
        return torch.cat([self.cls.expand(numeric.shape[0], -1, -1), num, cat], dim=1)


class TableTransformer(BertPreTrainedModel):
    """Feature tokenizer + BERT encoder + a head on [CLS]: logits (batch, num_labels). num_labels 1 is a
    regression: the head predicts the standardised target (MSE there) and the output is scaled back by
    `config.target_scale` ([mean, std] of the training targets), inside the graph."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        table = config.table
        self.features = FeatureTokenizer(table["n_numeric"], table["cardinalities"], config.hidden_size)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Sequential(nn.LayerNorm(config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, config.num_labels))
        self.post_init()

    def _init_weights(self, module):
        if not isinstance(module, FeatureTokenizer):  # it initialises itself (post_init would overwrite it)
            super()._init_weights(module)

    def forward(self, numeric, numeric_missing, categorical, labels=None, **_):
        hidden = self.bert(inputs_embeds=self.features(numeric, numeric_missing, categorical)).last_hidden_state
        logits = self.head(hidden[:, 0])
        loss = None
        if self.config.num_labels == 1:
            mean, std = getattr(self.config, "target_scale", None) or (0.0, 1.0)
            if labels is not None:
                loss = nn.functional.mse_loss(logits.squeeze(-1), (labels.float() - mean) / std)
            logits = logits * std + mean
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tensors(feeds: dict) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(feeds[name]) for name in INPUTS}


@torch.inference_mode()
def predict(model: TableTransformer, feeds: dict, batch_size: int = 256):
    """Logits (float32 numpy) for the preprocessed `feeds` (lifecycle.edge.TablePreprocessing)."""
    import numpy as np

    model.eval()
    x = tensors(feeds)
    n = x["numeric"].shape[0]
    outs = [model(**{k: v[i : i + batch_size] for k, v in x.items()}).logits for i in range(0, n, batch_size)]
    return torch.cat(outs).float().numpy() if outs else np.zeros((0, model.config.num_labels), dtype=np.float32)


def export_onnx(model: TableTransformer, feeds: dict, path: Path, opset: int = 17, output: str = "logits") -> None:
    """torch.onnx (TorchScript path, as for text graphs) with a dynamic batch axis; `feeds` is a sample."""
    from lifecycle import quiet

    model.eval()
    sample = tuple(torch.as_tensor(feeds[n][:2]) for n in INPUTS)
    with torch.inference_mode(), quiet.onnx_export():
        torch.onnx.export(model, sample, str(path), input_names=list(INPUTS), output_names=[output],
                          dynamic_axes={**{n: {0: "batch"} for n in INPUTS}, output: {0: "batch"}},
                          opset_version=opset, dynamo=False)


class Rows(torch.utils.data.Dataset):
    """Preprocessed rows and their targets, as the Trainer's default collator stacks them."""

    def __init__(self, feeds: dict, target):
        self.x, self.y = tensors(feeds), torch.as_tensor(target)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {**{k: v[i] for k, v in self.x.items()}, "labels": self.y[i]}


def fit(model: TableTransformer, data, train, out_dir: Path, seed: int = 0, ctx=None):
    """Train `model` on `data`'s training split (lifecycle.data.tables.TableData) with the Trainer;
    `train` is a lifecycle.components.training.TrainConfig. Leaves the model in eval mode; returns what
    training measured for the stage (lifecycle.components.training.train)."""
    from transformers import Trainer

    from lifecycle.components.training import train as run_trainer
    from lifecycle.components.training import training_args

    out_dir = Path(out_dir)
    args = training_args(train, out_dir, seed, eval_strategy="no", save_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=Rows(data.features("train")[0], data.target("train")))
    measured = run_trainer(trainer, out_dir, ctx)
    model.eval()
    return measured


# ------------------------------------------------------------------------------------ the recipe
def build(data, head: dict, source=None, parent: Path | None = None) -> TableTransformer:
    """A model for `data`: from a size preset (a ModelSource with `preset`, sizes as lifecycle.models
    declares them) or from a table model directory (`source.path`, or the parent's artifact), with a
    new head: `head` holds num_labels and the task's config fields (labels, or a target's scale)."""
    if source is not None and source.preset:
        config = preset_config(source, data.preprocessing, head["num_labels"])
        config.update(head)
        return TableTransformer(config)
    src = Path(source.path) if source is not None else Path(parent)
    config = BertConfig.from_pretrained(src)
    config.update(head)  # num_labels first: its setter resets id2label, which `head` may then set
    return TableTransformer.from_pretrained(src, config=config, ignore_mismatched_sizes=True)


def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    """The finetune stage for a table task (`task`: its plug-in, lifecycle.workloads.tables.task): build or
    load, train, save (with preprocessing.json), score on test with the from-scratch control (when
    asked) and the gradient-boosting baseline (always)."""
    import json
    import time

    from lifecycle import LifecycleError, models
    from lifecycle.components.adapters import attention_lora, merged
    from lifecycle.components.classification import seed_everything
    from lifecycle.edge import PREPROCESSING

    task = ctx.task
    data = ctx.task_data()
    source = cfg.model
    if source is not None and source.path:
        source = source.model_copy(update={"path": str(ctx.pipeline.resolve(source.path))})
    start = Path(parent.path) if source is None else Path(source.path) if source.path else None  # None: a preset
    if start is not None:  # continue a table model: read the table through its preprocessing
        if not (start / PREPROCESSING).is_file():
            raise LifecycleError(f"{start}: not a table model (no {PREPROCESSING}); start a table task from a "
                                 "`preset` or a masked-feature pretrain stage")
        data = data.read_through(json.loads((start / PREPROCESSING).read_text()), start)
    seed_everything(ctx.seed)
    model = build(data, task.train.head(data), source, None if parent is None else parent.path)
    if cfg.lora:  # the feature tokenizer stays: it is the table's vocabulary, as a text model's embeddings are
        model = attention_lora(model, cfg.lora, head="head")
    counts = models.count_parameters(model)
    started = time.time()
    measured = fit(model, data, cfg.train, ctx.scratch_dir / "checkpoints", ctx.seed, ctx)
    train_seconds = time.time() - started
    lora = {}
    if cfg.lora:  # merged into the weights, so export and distill see a plain TableTransformer
        probe = {k: v[:64] for k, v in data.features("validation")[0].items()}
        model, lora = merged(model, ctx.out_dir, lambda m: predict(m, probe))
    model.save_pretrained(ctx.out_dir, safe_serialization=True)
    (ctx.out_dir / PREPROCESSING).write_text(json.dumps(data.preprocessing, indent=2))
    details = {"log_history": measured.log_history, "labels": data.labels, "schema": vars(data.schema),
               "data_stats": data.stats}

    test, val = data.features("test")[0], data.features("validation")[0]
    metrics = {"data_wait_fraction": measured.data_wait_fraction, **task.train.test_metrics(predict(model, test), data.target("test")),
               **{f"val_{k}": v for k, v in task.train.evaluate(predict(model, val), data.target("validation")).items()},
               **counts, "trainable_fraction": counts["params_trainable"] / counts["params_total"],
               "size_mb": models.size_mb(ctx.out_dir / "model.safetensors"), "train_seconds": train_seconds, **lora}
    if cfg.control is not None:  # the same architecture from random init, same data, budget and seed
        seed_everything(ctx.seed)
        scratch = TableTransformer(model.config)
        fit(scratch, data, cfg.control.train or cfg.train, ctx.scratch_dir / "control", ctx.seed)
        control = task.train.evaluate(predict(scratch, test), data.target("test"))
        metrics.update({f"control_{k}": v for k, v in control.items()})
        headline = task.scores[0]  # higher is better for every table task's headline (accuracy, r2)
        metrics["pretraining_gain"] = metrics[headline] - metrics[f"control_{headline}"]
    metrics.update(task.train.baseline(data, ctx.seed))
    return metrics, details
