"""Contrastive objective for `pretrain` and `adapt` (`objective: contrastive`): sentence embeddings
learnt by pulling related texts together and pushing the other texts of the batch apart.

- `unsupervised` (SimCSE, Gao et al. 2021): every text of the corpus is encoded twice in one forward
  pass; dropout makes the two views differ and they are each other's positive. Any corpus, no labels.
- `supervised`: (anchor, positive) pairs from a file, optionally one hard negative per pair.

The loss is InfoNCE: cross-entropy over cos(anchor_i, candidate_j) / temperature, where the
candidates are the batch's positives (plus its hard negatives), so each anchor has B-1 in-batch
negatives (2B-1 with hard negatives): `negatives_per_example`. Under DDP the negatives are those of
the device's own batch (embeddings are not gathered across ranks).

Trade-offs a config sets:
- `train.batch_size`: more in-batch negatives per step usually give better embeddings (SimCSE used
  64-512), at memory and compute linear in B (the similarity matrix is B x B, negligible next to
  the encoder); on 2 CPU cores 16-32 is the practical range.
- `temperature`: low (0.05, SimCSE's) weights the hardest negatives most, which spreads embeddings
  out (uniformity) but also pushes apart near-duplicates that happen to share a batch (false
  negatives); higher (0.1-0.2) is gentler and favours alignment. The loss scale changes with it too.

Reported: the loss curve (the Trainer's log history in the manifest), `eval_loss` on held-out texts
(unsupervised: scored without dropout, so the two views coincide and it measures how far apart the
texts of a batch are), alignment and uniformity (Wang & Isola 2020) before and after, and with
`task: {type: embedding}` kNN label accuracy (and Spearman on scored pairs) before and after.
The artifact is the encoder (AutoModel weights, no head) plus pooling.json.
"""

from __future__ import annotations

import functools
import math
import random
import time

from lifecycle.embedding import Contrastive, Pooling, info_nce

CONTRASTIVE_METRICS = {
    "eval_loss", "train_loss", "train_seconds", "train_steps", "texts_per_second", "train_texts", "params_total",
    "world_size", "data_wait_fraction", "temperature", "batch_size", "negatives_per_example",
    "alignment", "uniformity", "alignment_before", "uniformity_before",
    "knn_accuracy", "knn_accuracy_before", "knn_accuracy_gain", "knn_train_texts", "knn_test_texts",
    "spearman", "spearman_before", "spearman_gain"}


class PairCollator:
    """Tokenizes a batch as it is drawn (dynamic padding): {"anchor": enc} for single texts (the
    trainer makes the two dropout views), or anchor / positive (/ negative) encodings for pairs."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, texts: list[str]) -> dict:
        return dict(self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                   return_tensors="pt"))

    def __call__(self, rows: list[dict]) -> dict:
        if "text" in rows[0]:
            return {"anchor": self.encode([r["text"] for r in rows])}
        out = {"anchor": self.encode([r["text1"] for r in rows]), "positive": self.encode([r["text2"] for r in rows])}
        if "negative" in rows[0]:
            out["negative"] = self.encode([r["negative"] for r in rows])
        return out


@functools.cache
def trainer_class():
    """transformers.Trainer with the InfoNCE loss (imported late: torch and transformers are heavy)."""
    import torch
    from transformers import Trainer

    from lifecycle.embedding import pool

    class ContrastiveTrainer(Trainer):
        def __init__(self, *args, pooling: Pooling, temperature: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.pooling, self.temperature = pooling, temperature
            self.model_accepts_loss_kwargs = False  # the Trainer then averages over gradient accumulation

        def embed(self, model, enc):
            return pool(model(**enc).last_hidden_state, enc["attention_mask"], self.pooling)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            anchor = inputs["anchor"]
            if "positive" not in inputs:  # SimCSE: the batch twice in one forward pass, different dropout
                anchors, candidates = self.embed(model, {k: torch.cat([v, v]) for k, v in anchor.items()}).chunk(2)
            else:
                anchors, candidates = self.embed(model, anchor), self.embed(model, inputs["positive"])
                if "negative" in inputs:
                    candidates = torch.cat([candidates, self.embed(model, inputs["negative"])])
            loss = info_nce(anchors, candidates, self.temperature)
            return (loss, {"embeddings": anchors}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return ContrastiveTrainer


def train(stage, model, tokenizer, start_pooling: Pooling, ctx, corpus=None) -> tuple[dict, dict]:
    """Train `model` (an encoder, AutoModel) with the stage's contrastive settings; write the artifact
    (weights, tokenizer, pooling.json) and return its (metrics, manifest details). Shared by pretrain
    and adapt."""
    from datasets import Dataset

    from lifecycle import models
    from lifecycle.components import training
    from lifecycle.data.corpus import load_corpus
    from lifecycle.embedding import read_pairs, write_pooling

    spec = stage.contrastive or Contrastive()
    pooling = spec.pooling or start_pooling
    corpus = corpus or load_corpus(ctx.pipeline.data[stage.data], ctx.pipeline, ctx.seed)
    heldout = random.Random(ctx.seed).sample(list(corpus.splits["validation"]["text"]),
                                             min(spec.eval_texts, len(corpus.splits["validation"])))
    if spec.mode == "unsupervised":
        train_set = Dataset.from_dict({"text": list(corpus.splits["train"]["text"])})
        eval_set = Dataset.from_dict({"text": heldout})
        positives = None  # alignment: two dropout views of the held-out texts
    else:
        pairs = read_pairs(spec.pairs, ctx.pipeline)
        rows = [{k: v[i] for k, v in pairs.items() if v is not None and k != "score"} for i in range(len(pairs["text1"]))]
        random.Random(ctx.seed).shuffle(rows)
        n_val = max(1, round(len(rows) * spec.validation))
        train_set, eval_set = Dataset.from_list(rows[n_val:]), Dataset.from_list(rows[:n_val])
        positives = (eval_set["text1"], eval_set["text2"])

    args = training.training_args(stage.train, ctx.scratch_dir / "checkpoints", ctx.seed, prediction_loss_only=True,
                                  remove_unused_columns=False, label_names=[])
    trainer = trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              data_collator=PairCollator(tokenizer, spec.max_length), pooling=pooling,
                              temperature=spec.temperature)
    before = measure(model, tokenizer, pooling, spec, heldout, positives, ctx)
    started = time.perf_counter()
    measured = training.train(trainer, ctx.scratch_dir / "checkpoints", ctx)
    seconds = time.perf_counter() - started
    final = trainer.evaluate()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    hard = spec.mode == "supervised" and spec.pairs.negative_field is not None
    metrics = {"data_wait_fraction": measured.data_wait_fraction, "eval_loss": final["eval_loss"], "train_loss": losses[-1] if losses else math.nan,
               "train_seconds": seconds, "train_steps": trainer.state.global_step, "train_texts": len(train_set),
               "texts_per_second": trainer.state.global_step * stage.train.batch_size * stage.train.grad_accum
               * args.world_size / max(seconds, 1e-9),
               "temperature": spec.temperature, "batch_size": stage.train.batch_size,
               "negatives_per_example": (2 if hard else 1) * stage.train.batch_size - 1,
               "world_size": args.world_size, "params_total": models.count_parameters(model)["params_total"]}
    details = {"log_history": measured.log_history}
    if not trainer.is_world_process_zero():
        return metrics, details
    after = measure(trainer.model, tokenizer, pooling, spec, heldout, positives, ctx)
    metrics.update(after, **{f"{k}_before": before[k] for k in ("alignment", "uniformity", "knn_accuracy", "spearman")
                             if k in before})
    for name in ("knn_accuracy", "spearman"):
        if name in after:
            metrics[f"{name}_gain"] = after[name] - before[name]
    details.update(objective="contrastive", mode=spec.mode, pooling=pooling.model_dump(), data=corpus.stats)
    models.save(trainer.model, tokenizer, ctx.out_dir)
    write_pooling(ctx.out_dir, pooling)
    return metrics, details


def measure(model, tokenizer, pooling: Pooling, spec: Contrastive, texts, positives, ctx) -> dict:
    """Alignment / uniformity on held-out texts, and the embedding task's metrics when the pipeline
    has `task: {type: embedding}`. Unsupervised alignment compares two dropout views (train mode)."""
    import torch

    from lifecycle.components.inference import embed_torch
    from lifecycle.embedding import alignment_uniformity, embedding_model

    wrapped = embedding_model(model, pooling)
    embed = functools.partial(embed_torch, wrapped, tokenizer, max_length=spec.max_length)
    was_training = model.training
    x = embed(texts)
    if positives is None:
        torch.manual_seed(ctx.seed)
        model.train()  # dropout on, gradients off: the two views the objective trains on
        with torch.no_grad():
            views = [_embed_noisy(wrapped, tokenizer, texts, spec.max_length) for _ in range(2)]
        out = {"alignment": alignment_uniformity(*views)["alignment"], "uniformity": alignment_uniformity(x, x)["uniformity"]}
    else:
        out = {"alignment": alignment_uniformity(embed(positives[0]), embed(positives[1]))["alignment"],
               "uniformity": alignment_uniformity(x, x)["uniformity"]}
    if ctx.pipeline.task is not None:  # the task's own scores of an encoder (embedding: kNN accuracy...)
        out.update(ctx.task.encoder_scores(lambda t: embed(list(t)), ctx.pipeline))
    model.train(was_training)
    return out


def _embed_noisy(wrapped, tokenizer, texts, max_length: int, batch_size: int = 64):
    """Embeddings in whatever mode the model is in (train: a dropout view); the caller holds no_grad."""
    from lifecycle.components.inference import MODEL_INPUTS, batched

    return batched(lambda enc: wrapped(**enc), tokenizer, texts, max_length, batch_size, inputs=MODEL_INPUTS)


def pretrain(cfg, parent, ctx) -> tuple[dict, dict]:
    """The pretrain recipe: an encoder from scratch trained only with the contrastive objective."""
    from transformers import AutoModel, set_seed

    from lifecycle import models
    from lifecycle.data.corpus import load_corpus
    from lifecycle.embedding import Pooling
    from lifecycle.workloads.text.language_model import tokenizer_for

    corpus = load_corpus(ctx.pipeline.data[cfg.data], ctx.pipeline, ctx.seed)
    tokenizer = tokenizer_for(cfg, corpus, ctx)
    set_seed(ctx.seed)
    model = AutoModel.from_config(models.preset_config(cfg.model, len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    metrics, details = train(cfg, model, tokenizer, Pooling(), ctx, corpus)
    return {**metrics, **corpus.stats, "vocab_size": len(tokenizer)}, details


def adapt(cfg, parent, ctx) -> tuple[dict, dict]:
    """The adapt recipe: the parent (or `model:`) encoder continued as a sentence-embedding model."""
    from pathlib import Path

    from transformers import AutoModel, set_seed

    from lifecycle import models
    from lifecycle.embedding import read_pooling

    path = models.model_dir(cfg.model, ctx.pipeline) if cfg.model is not None else Path(parent.path)
    tokenizer = models.load_tokenizer(path, cfg.block_size)
    set_seed(ctx.seed)
    metrics, details = train(cfg, models.load_model(AutoModel, path), tokenizer, read_pooling(path), ctx)
    return metrics, {**details, "start": str(path)}
