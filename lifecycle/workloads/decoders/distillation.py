"""The distill stage for a causal LM (the generation task's recipe; lifecycle.workloads.decoders.generation): token-level
knowledge distillation of the parent decoder (the teacher) into a decoder with fewer layers.

Student: the teacher's config with half its layers by default, initialised from teacher layers spread over
the depth, first and last included (lifecycle.components.distillation, as for text classifiers and tables:
4 -> 2 keeps layers 0 and 3); embeddings, final norm and LM head are copied whole.

Loss, at every position whose next token is a target (the task's examples: every token of plain text, the
response tokens of prompt/response records): alpha * KL(p_teacher || p_student at temperature T) * T^2 +
(1 - alpha) * the LM cross-entropy on the data. The teacher runs at every step: its logits are one
vocabulary-sized vector per token (8,000 floats for Brown's tokenizer: 256 MB per 8,000 tokens), so caching
them over the training split, as classification does, would cost more memory than the teacher's forward
pass costs time. Evaluation loss is the plain LM loss, so `eval_loss` compares across students and runs.

Metrics on the task's held-out splits (the same examples and the same `perplexity` as finetune and export
report, so later stages compare with it): the student's and the teacher's `perplexity`, `perplexity_ratio`
(student / teacher), `kl_to_teacher` (mean per-token KL(teacher || student) at T = 1 on test),
`generation_agreement` (share of the task's prompts whose greedy continuation equals the teacher's) and
`next_token_agreement` (the first greedy token), `speedup` (teacher / student torch p50 latency of one
forward pass at batch 1 and the context length, alternating rounds), `compression` (teacher / student
parameters). The kept model is the last step's (as in generation finetune).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from lifecycle.evaluation.latency import TORCH_LATENCY

DISTILL_METRICS = ("perplexity", "val_perplexity", "teacher_perplexity", "perplexity_ratio", "kl_to_teacher",
                   "generation_agreement", "next_token_agreement", "eval_loss", *TORCH_LATENCY,
                   *(f"teacher_{m}" for m in TORCH_LATENCY), "speedup", "compression", "params_total",
                   "teacher_params_total", "size_mb", "teacher_size_mb", "train_seconds", "train_steps")


def distill(cfg, parent, ctx) -> tuple[dict, dict]:
    from transformers import AutoModelForCausalLM, set_seed

    from lifecycle import models
    from lifecycle.components import training
    from lifecycle.components.distillation import (
        init_from_teacher,
        paired_latency,
        student_config,
        student_layers,
    )
    from lifecycle.workloads.decoders import model as generation

    task = ctx.pipeline.task
    settings = task.generation_settings
    data = ctx.task_data()
    teacher, tokenizer = generation.load_causal_lm(Path(parent.path))
    layers = student_layers(cfg.student, teacher.config.num_hidden_layers)
    set_seed(ctx.seed)
    student = AutoModelForCausalLM.from_config(student_config(teacher.config, layers, cfg.student.overrides))
    details = {"student_layers": layers, "initialised_from_teacher": init_from_teacher(student, teacher, layers),
               "student_num_layers": len(layers)}
    separator, rows, held = generation.split_rows(data, tokenizer, task, "distill")

    trainer = generation.lm_trainer(token_distillation_trainer(teacher, cfg.temperature, cfg.alpha), student, cfg.train,
                                    ctx, rows["train"], held["validation"], tokenizer.pad_token_id)
    started = time.time()
    measured = training.train(trainer, ctx.scratch_dir / "checkpoints", ctx)
    train_seconds = time.time() - started
    details["log_history"] = measured.log_history
    if not trainer.is_world_process_zero():
        return {}, details  # under torchrun only rank 0's artifact is kept
    student = trainer.model.to("cpu").eval()
    models.save(student, tokenizer, ctx.out_dir)

    pad = tokenizer.pad_token_id
    s_ppl, t_ppl = generation.perplexity(student, held["test"], pad), generation.perplexity(teacher, held["test"], pad)
    val_ppl = generation.perplexity(student, held["validation"], pad)
    prompts = data.splits["test"]["prompts"]
    s_out, t_out = (generation.continuations(m, tokenizer, prompts, settings.new_tokens, task.max_length, separator)
                    for m in (student, teacher))
    t_lat, s_lat = paired_latency(teacher, tokenizer, student, tokenizer, prompts[0] if prompts else "", cfg,
                                  task.max_length)
    s_params, t_params = models.count_parameters(student)["params_total"], models.count_parameters(teacher)["params_total"]
    details.update(loss_on="response tokens" if separator is not None else "every token",
                   sample_generations=generation.sample_generations(student, tokenizer, prompts[:4],
                                                                    settings.new_tokens, task.max_length, separator))
    return {"data_wait_fraction": measured.data_wait_fraction, **s_lat, **{f"teacher_{k}": t_lat[k] for k in TORCH_LATENCY},
            "perplexity": s_ppl, "val_perplexity": val_ppl, "teacher_perplexity": t_ppl,
            "perplexity_ratio": s_ppl / t_ppl, "eval_loss": math.log(val_ppl),
            "kl_to_teacher": kl_to_teacher(student, teacher, held["test"], pad),
            "generation_agreement": float((s_out.tokens == t_out.tokens).all(axis=1).mean()),
            "next_token_agreement": float((s_out.logits.argmax(1) == t_out.logits.argmax(1)).mean()),
            "speedup": t_lat["torch_latency_p50_ms"] / s_lat["torch_latency_p50_ms"], "compression": t_params / s_params,
            "params_total": s_params, "teacher_params_total": t_params,
            "size_mb": models.size_mb(ctx.out_dir / "model.safetensors"),
            "teacher_size_mb": models.size_mb(Path(parent.path) / "model.safetensors"),
            "train_seconds": train_seconds, "train_steps": trainer.state.global_step}, details


def token_distillation_trainer(teacher, temperature: float, alpha: float):
    """A Trainer class whose training loss is token_distillation_loss against `teacher` (run at every step);
    its evaluation loss is the student's LM loss."""
    import torch
    from transformers import Trainer

    from lifecycle.components.distillation import token_distillation_loss

    class TokenDistillationTrainer(Trainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.model_accepts_loss_kwargs = False  # a plain mean loss: the Trainer divides it by grad_accum
            self.teacher = teacher.to(self.args.device).eval()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:
                outputs = model(**inputs)
                return (outputs.loss, outputs) if return_outputs else outputs.loss
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            with torch.no_grad():
                t_logits = self.teacher(**inputs).logits
            loss = token_distillation_loss(outputs.logits, t_logits, labels, temperature, alpha)
            return (loss, outputs) if return_outputs else loss

    return TokenDistillationTrainer


def kl_to_teacher(student, teacher, rows: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """Mean KL(p_teacher || p_student) in nats per target token of `rows` (generation.examples), at T = 1."""
    import torch
    import torch.nn.functional as F

    from lifecycle.workloads.decoders.model import collator

    collate, total, count = collator(pad_id), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size])
            keep = batch["labels"][:, 1:] != -100
            feeds = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            s, t = (F.log_softmax(m(**feeds).logits[:, :-1][keep].float(), -1) for m in (student, teacher))
            total += float(F.kl_div(s, t, reduction="sum", log_target=True))
            count += int(keep.sum())
    return total / count if count else float("nan")
