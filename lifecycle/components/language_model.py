"""Language modelling shared by pretrain and adapt: the masked-LM head that projects only masked
positions, packed blocks and their collation, the Trainer loop with its measurements, and perplexity
(with the unigram baseline a pre-trained model must beat).

Masked-LM computes the vocabulary projection only at the masked positions (~15% of tokens). For small
encoders that projection dominates the cost, so this is ~2x faster, with the same weights and the
same checkpoint format (the artifact is saved as a plain BertForMaskedLM).

For a masked-LM the perplexity is exp(mean cross-entropy at the masked positions) of a validation set
whose masks were fixed once (`lifecycle.data.corpus.mask_for_eval`: 15% of tokens, all shown as
[MASK]), so two models, or one model before and after adaptation, are scored on the same positions. The unigram baseline predicts every
target token from its training-split frequency alone, scored at exactly those positions: a model that
does not beat it learned nothing from context.
"""

from __future__ import annotations

import functools
import math
import time

from lifecycle.components.training import TrainConfig
from lifecycle.data.corpus import STAT_KEYS

LM_METRICS = {"eval_loss", "perplexity", "train_loss", "tokens_per_second", "train_seconds", "train_tokens",
              "params_total", "vocab_size", "world_size", "data_wait_fraction", *STAT_KEYS}


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


# ------------------------------------------------------------------------------------- training
def lm_training_args(train: TrainConfig, ctx, **extra):
    from lifecycle.components import training

    # Only the loss is needed at evaluation; keeping logits of a 30k vocabulary would cost memory for nothing.
    # The block datasets hold model inputs only, so the Trainer need not drop columns.
    return training.training_args(train, ctx.scratch_dir / "checkpoints", ctx.seed, prediction_loss_only=True,
                                  remove_unused_columns=False, **extra)


def lm_blocks(corpus, tokenizer, block_size: int, objective: str, mlm_probability: float, ctx, args, num_proc=None):
    """Packed training blocks and a validation set with fixed masks; tokenized once per content
    (cache under the run directory), by the main process first under DDP."""
    from lifecycle.data.corpus import mask_for_eval, tokenize_and_pack

    with args.main_process_first(desc="tokenize corpus"):
        packed = tokenize_and_pack(corpus.splits, tokenizer, block_size, objective, ctx.run_dir / ".cache" / "corpus",
                                   num_proc)
    val = packed["validation"]
    if objective == "mlm":
        val = mask_for_eval(val, tokenizer, mlm_probability, ctx.seed)
    return packed["train"], val


def new_model(config, objective: str):
    from transformers import AutoModelForCausalLM

    if objective == "mlm":
        return sparse_mlm_class()(config)
    return AutoModelForCausalLM.from_config(config)


@functools.cache
def sparse_mlm_class():
    """BertForMaskedLM whose training loss projects only the masked positions onto the vocabulary.
    Without labels it is exactly BertForMaskedLM (full logits)."""
    import torch.nn.functional as F
    from transformers import BertForMaskedLM
    from transformers.modeling_outputs import MaskedLMOutput

    class SparseBertForMaskedLM(BertForMaskedLM):
        accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch: exact means under grad accumulation

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                    num_items_in_batch=None, **kwargs):
            if labels is None:
                return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
            hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids).last_hidden_state
            masked = labels != -100
            logits = self.cls(hidden[masked])
            loss = F.cross_entropy(logits.float(), labels[masked], reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else masked.sum().clamp(min=1))
            return MaskedLMOutput(loss=loss, logits=logits)

    return SparseBertForMaskedLM


def plain_model(model):
    """The artifact holds a stock class (BertForMaskedLM), whatever ran the training loss."""
    if type(model) is not sparse_mlm_class():
        return model
    from transformers import BertForMaskedLM

    plain = BertForMaskedLM(model.config)
    plain.load_state_dict(model.state_dict())
    return plain


def lm_trainer(model, tokenizer, objective: str, blocks, eval_blocks, args, mlm_probability: float = 0.15):
    from transformers import Trainer, default_data_collator

    from lifecycle.data.corpus import MaskedLMCollator

    # Validation examples come with fixed masks (labels); training blocks are masked as they are batched.
    collate = MaskedLMCollator(tokenizer, mlm_probability, args.seed) if objective == "mlm" else default_data_collator
    return Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=eval_blocks, data_collator=collate)


def finish(trainer, tokenizer, probe, ctx, metrics: dict) -> dict:
    """Probe and save on the main process only: under torchrun, one process writes the artifact."""
    from lifecycle import models

    if trainer.is_world_process_zero():
        if probe:
            from lifecycle.components.probe import probe_accuracy

            task = ctx.data(probe.data)
            metrics.update(probe_accuracy(trainer.model, tokenizer, task, probe, ctx.seed))
        models.save(plain_model(trainer.model), tokenizer, ctx.out_dir)
    return metrics


def fit(trainer, ctx, block_size: int) -> tuple[dict, dict]:
    """Train (resuming from the last complete checkpoint if a previous run crashed), evaluate, and measure:
    (metrics, manifest details: the loss curve and the step it resumed from)."""
    from lifecycle.components import checkpoints, training

    checkpoint_dir = ctx.scratch_dir / "checkpoints"
    last = checkpoints.last_checkpoint(checkpoint_dir)  # the one training.train resumes from
    first_step = int(last.name.rsplit("-", 1)[1]) if last else 0
    started = time.perf_counter()
    measured = training.train(trainer, checkpoint_dir, ctx)
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    # tokens/s counts training only: evaluations inside train() are timed by the Trainer and taken out.
    eval_seconds = sum(r.get("eval_runtime", 0.0) for r in history if r.get("step", 0) > first_step)
    args = trainer.args
    tokens = (trainer.state.global_step - first_step) * args.per_device_train_batch_size \
        * args.gradient_accumulation_steps * args.world_size * block_size
    final = trainer.evaluate()
    for row in history:
        if "eval_loss" in row:
            row["eval_perplexity"] = perplexity(row["eval_loss"])
    train_losses = [r["loss"] for r in history if "loss" in r]
    seconds = max(wall - eval_seconds, 1e-9)
    metrics = {"data_wait_fraction": measured.data_wait_fraction, "eval_loss": final["eval_loss"],
               "perplexity": perplexity(final["eval_loss"]),
               "train_loss": train_losses[-1] if train_losses else math.nan, "train_tokens": tokens,
               "train_seconds": seconds, "tokens_per_second": tokens / seconds, "world_size": args.world_size}
    return metrics, {"log_history": training.log_history(trainer), "resumed_from_step": first_step}


def transfer_callback(cfg, tokenizer, task, label: str):
    """A TrainerCallback that probes the model on `task` (the probe's data) at each evaluation, on the
    validation split, and the list it appends {stage, step, perplexity, probe_accuracy} to as training
    goes: the manifest's `transfer` (the report plots them)."""
    from transformers import TrainerCallback

    from lifecycle.components.probe import probe_accuracy

    points = []

    class TransferProbe(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics or model is None:
                return
            if points and points[-1]["stage"] == label and points[-1]["step"] == state.global_step:
                return  # the final evaluation after training repeats the last step
            score = probe_accuracy(model, tokenizer, task, cfg, args.seed, split="validation")["probe_accuracy"]
            # the loss is capped at 50 here: a point on the report's plot, never a gate
            points.append({"stage": label, "step": state.global_step,
                           "perplexity": perplexity(min(metrics["eval_loss"], 50.0)), "probe_accuracy": score})

    return TransferProbe(), points
