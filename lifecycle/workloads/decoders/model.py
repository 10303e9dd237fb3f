"""Causal language models for the generation task (lifecycle.workloads.decoders.generation): its data, its fine-tuning
recipe, held-out perplexity and the PyTorch reference the ONNX decoder is checked against.

Data. Prompt/response records (jsonl or csv, the task's `prompt_field` / `response_field`) or plain text (a
corpus source: every token is a target, and the first `prompt_words` words of a held-out text are its
prompt when generations are compared). A training example is `prompt + separator`, then `response` and
the end-of-text token; only the response tokens (and end-of-text) are targets: prompt positions get
label -100, so the model is never trained to write prompts. Plain text is cut into `max_length`-token
pieces (no piece crosses a document).

Fine-tuning: full or LoRA (peft, CAUSAL_LM, merged before the artifact is written), batches grouped by
length (lifecycle.components.training.length_grouped_sampler: far less padding than random batches of
uneven records). Perplexity is exp(mean NLL over target tokens), the same targets the loss has. With
`task.generation.rouge`, the model before and after fine-tuning answers the same test records greedily, and
ROUGE-L (lifecycle.workloads.decoders.rouge) scores both against the references, beside the lead-sentences baseline.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from lifecycle import LifecycleError, quiet

PROMPT_STRIDE = 97  # words between two prompts taken from one held-out document (plain text)
GENERATION_METRICS = ("perplexity", "val_perplexity", "perplexity_before", "perplexity_gain", "eval_loss",
                      "params_total", "params_trainable", "trainable_fraction", "size_mb", "train_seconds",
                      "train_steps", "lora_merge_max_abs_diff",
                      # with task.generation.rouge: greedy answers against the references (0..1; gain = after - before)
                      "rouge_l", "rouge_l_before", "rouge_l_gain", "baseline_lead_rouge_l")


@dataclass
class GenerationData:
    """train / validation / test splits, each {"prompt": [...], "response": [...]} (prompt "" for plain text)."""

    # each {"prompt": [...], "response": [...], "prompts": [...]}: "prompts" are what generations are compared on;
    # "lead" too (the lead baseline's source text per record) when task.generation.rouge names a lead_field
    splits: dict[str, dict[str, list[str]]]
    plain: bool  # a corpus: no prompts, language modelling


# ------------------------------------------------------------------------------------------------- data
def load_data(src, pipeline, settings, seed: int) -> GenerationData:
    """The task's source as prompt/response splits (see the module docstring)."""
    if settings.prompt_field is None:
        from lifecycle.data.corpus import load_corpus

        corpus = load_corpus(src, pipeline, seed)
        held = list(corpus.splits["validation"]["text"])
        # validation and test: alternate held-out documents (the corpus reader already split them by seed)
        parts = {"train": list(corpus.splits["train"]["text"]), "validation": held[0::2], "test": held[1::2]}
        if not parts["test"]:
            raise LifecycleError("task.data: too few held-out documents for a validation and a test split; raise "
                                 "`split.validation`")
        return _with_prompts({k: {"prompt": [""] * len(v), "response": v} for k, v in parts.items()}, settings, True)
    records = []
    for f in src.files(pipeline):
        records.extend(_records(f, src, settings))
    if not records:
        raise LifecycleError(f"task.data: no records with `{settings.prompt_field}` and `{settings.response_field}`")
    random.Random(seed if src.split.seed is None else src.split.seed).shuffle(records)
    n_val, n_test = round(len(records) * src.split.validation), round(len(records) * src.split.test)
    if n_val < 1 or n_test < 1:
        raise LifecycleError("task.data: split.validation and split.test must each leave at least one record")
    cuts = {"validation": records[:n_val], "test": records[n_val : n_val + n_test], "train": records[n_val + n_test :]}
    return _with_prompts({k: {key: [r[key] for r in v[: src.limit]] for key in records[0]} for k, v in cuts.items()},
                         settings, False)


def _with_prompts(splits: dict, settings, plain: bool) -> GenerationData:
    for split in splits.values():
        split["prompts"] = prompts_of(split, settings, plain)
    return GenerationData(splits, plain)


def _records(path: Path, src, settings) -> list[dict[str, str]]:
    """{"prompt", "response"} per record with a response (and "lead": the lead baseline's source, when asked)."""
    if src.format == "jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding=src.encoding).splitlines() if line.strip()]
    elif src.format in ("csv", "tsv"):
        with path.open(encoding=src.encoding, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if src.format == "tsv" else ","))
    elif src.format == "pubmedqa":  # {id: {QUESTION, CONTEXTS: [...], LONG_ANSWER, ...}}, in id order
        items = json.loads(path.read_text(encoding=src.encoding))
        rows = [items[key] for key in sorted(items)]
    else:
        raise LifecycleError(f"task.data: prompt/response records come from jsonl, csv, tsv or pubmedqa, not {src.format}")
    p = [settings.prompt_field] if isinstance(settings.prompt_field, str) else settings.prompt_field
    fields = {"prompt_field": p, "response_field": [settings.response_field]}
    if settings.rouge and settings.rouge.lead_field:
        fields["rouge.lead_field"] = [settings.rouge.lead_field]
    missing = next(((name, k) for name, keys in fields.items() for k in keys if rows and k not in rows[0]), None)
    if missing:
        raise LifecycleError(f"{path}: no field '{missing[1]}' (have {sorted(rows[0])}); set task.generation."
                             f"{missing[0]}")

    def text(value) -> str:
        return (" ".join(map(str, value)) if isinstance(value, list) else str(value)).strip()

    out = []
    for row in rows:
        record = {"prompt": "\n".join(text(row[k]) for k in p), "response": text(row[settings.response_field])}
        if settings.max_prompt_words:
            record["prompt"] = cut_words(record["prompt"], settings.max_prompt_words)
        if "rouge.lead_field" in fields:
            record["lead"] = text(row[settings.rouge.lead_field])
        if record["response"]:
            out.append(record)
    return out


def cut_words(text: str, n: int) -> str:
    """The first `n` white-space separated words of `text`, its line breaks kept."""
    import re

    words = list(re.finditer(r"\S+", text))
    return text if len(words) <= n else text[: words[n - 1].end()]


def prompts_of(split: dict, settings, plain: bool) -> list[str]:
    """The prompts generations are compared on: the records' prompts, or the first words of held-out texts."""
    if not plain:
        return split["prompt"][: settings.prompts]
    # Held-out documents are few and long (Brown: ~2,000 words each): a prompt every PROMPT_STRIDE words,
    # taken from the documents in turn, so that the prompts come from every document.
    n = settings.prompt_words
    per_doc = [[" ".join(words[i : i + n]) for i in range(0, max(len(words) - n, 1), PROMPT_STRIDE)]
               for words in (t.split() for t in split["response"])]
    turns = (doc[k] for k in range(max(map(len, per_doc), default=0)) for doc in per_doc if k < len(doc))
    return [p for p in turns if p][: settings.prompts]


# ------------------------------------------------------------------------------------------- examples
def prompt_ids(tokenizer, prompt: str, separator: str | None) -> list[int]:
    """Token ids of a prompt as the model reads it before its answer (separator appended when the model
    was trained on prompt/response pairs); the same rule as lifecycle.edge.Predictor.prompt_ids."""
    text = prompt + separator if separator is not None else prompt
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def examples(split: dict, tokenizer, max_length: int, separator: str | None) -> list[dict]:
    """input_ids and labels (-100 on prompt positions) per example; plain text cut into max_length pieces."""
    eos = tokenizer.eos_token_id
    out = []
    for prompt, response in zip(split["prompt"], split["response"]):
        head = prompt_ids(tokenizer, prompt, separator) if prompt else []
        tail = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
        if not head:  # language modelling: every token a target, pieces of max_length
            out.extend({"input_ids": tail[i : i + max_length], "labels": tail[i : i + max_length]}
                       for i in range(0, len(tail), max_length) if len(tail[i : i + max_length]) > 1)
            continue
        ids = (head + tail)[:max_length]
        labels = ([-100] * len(head) + tail)[:max_length]
        if any(label != -100 for label in labels):  # a prompt that fills the context has nothing to learn
            out.append({"input_ids": ids, "labels": labels})
    return out


def collator(pad_id: int):
    """Right-pads a batch: pad id, attention 0 and label -100 on padding."""
    import torch

    def collate(batch: list[dict]) -> dict:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k], mask[i, :k], labels[i, :k] = (torch.tensor(b["input_ids"]), 1, torch.tensor(b["labels"]))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def perplexity(model, rows: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """exp(mean NLL) over the target tokens of `rows` (examples()), the loss's own targets."""
    import torch

    model.eval()
    collate, nll, count = collator(pad_id), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                           targets.reshape(-1), ignore_index=-100, reduction="sum"))
            count += int((targets != -100).sum())
    return math.exp(nll / max(count, 1)) if count else float("nan")


# --------------------------------------------------------------------------------------------- models
def load_causal_lm(path: Path):
    from transformers import AutoModelForCausalLM

    from lifecycle import models

    return models.load_model(AutoModelForCausalLM, path).eval(), models.load_tokenizer(path)


def continuations(model, tokenizer, prompts: list[str], new_tokens: int, context: int, separator: str | None):
    """PyTorch's Continuations (lifecycle.edge.decoding), as the edge runtime's `continuations()` gives them: per
    prompt, the next-token logits after it and `new_tokens` greedy tokens (with the model's own KV cache; -1
    after the end-of-text token). One prompt at a time: no padding, as the edge runtime runs them."""
    import torch

    from lifecycle.edge.decoding import Continuations

    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = prompt_ids(tokenizer, prompt, separator) or [tokenizer.eos_token_id]
            ids = ids[-(context - 1):]
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, -1].float().numpy()
            budget = min(new_tokens, context - len(ids))
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=budget, do_sample=False,
                                 use_cache=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            greedy = out[0, len(ids):].tolist()
            if tokenizer.eos_token_id in greedy:
                greedy = greedy[: greedy.index(tokenizer.eos_token_id) + 1]
            rows.append((logits, greedy))
    return Continuations.of(rows, new_tokens, model.config.vocab_size)


def split_rows(data: GenerationData, tokenizer, task, stage: str):
    """(separator, examples per split, held-out examples scored: the first `limit` of validation and test)."""
    settings = task.generation_settings
    separator = None if data.plain else settings.separator
    rows = {k: examples(v, tokenizer, task.max_length, separator) for k, v in data.splits.items()}
    if not rows["train"]:
        raise LifecycleError(f"{stage}: no training example has a response token within task.max_length")
    return separator, rows, {k: rows[k][: settings.limit] for k in ("validation", "test")}


def lm_trainer(trainer_class, model, train_cfg, ctx, train_rows: list[dict], val_rows: list[dict], pad_id: int,
               **kwargs):
    """A `trainer_class` (the Trainer or a subclass) over examples() rows: batches grouped by length, right-padded,
    the loss only (no logits kept in evaluation), checkpoints in the stage's scratch directory."""
    from datasets import Dataset

    from lifecycle.components import training

    class LengthGrouped(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            return training.length_grouped_sampler(self.args, train_dataset or self.train_dataset)

    args = training.training_args(train_cfg, ctx.scratch_dir / "checkpoints", ctx.seed, remove_unused_columns=False,
                                  prediction_loss_only=True)
    return LengthGrouped(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(val_rows), data_collator=collator(pad_id), **kwargs)


# ------------------------------------------------------------------------------------------- finetune
def finetune(cfg, parent, ctx) -> tuple[dict, dict]:
    """The finetune stage under `task: {type: generation}`: full or LoRA on response tokens only."""
    from transformers import Trainer, set_seed

    from lifecycle import models
    from lifecycle.components import training

    task = ctx.pipeline.task
    settings = task.generation_settings
    data = ctx.task_data()
    source = Path(parent.path) if cfg.model is None else models.model_dir(cfg.model, ctx.pipeline)
    set_seed(ctx.seed)
    model, tokenizer = load_causal_lm(source)
    separator, rows, held = split_rows(data, tokenizer, task, "finetune")
    before = perplexity(model, held["test"], tokenizer.pad_token_id)
    answer = functools.partial(answers, tokenizer=tokenizer, context=task.max_length, separator=separator)
    if settings.rouge:  # the same model before fine-tuning answers the same test records
        scored = {k: v[: settings.rouge.records] for k, v in data.splits["test"].items()}
        answered_before = answer(model, scored["prompt"], settings.rouge.answer_tokens)
    if cfg.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        with quiet.lora_on_conv1d():
            model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                     lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules))
    counts = models.count_parameters(model)
    trainer = lm_trainer(Trainer, model, cfg.train, ctx, rows["train"], held["validation"], tokenizer.pad_token_id)
    started = time.time()
    measured = training.train(trainer, ctx.scratch_dir / "checkpoints", ctx)
    train_seconds = time.time() - started
    model = trainer.model
    metrics, details = {"data_wait_fraction": measured.data_wait_fraction}, {"log_history": measured.log_history}
    if cfg.lora:
        import torch

        model.save_pretrained(ctx.out_dir / "adapter", safe_serialization=True)
        probe = collator(tokenizer.pad_token_id)(held["validation"][:8])
        model.eval()
        with torch.no_grad():
            adapter_logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
            model = model.merge_and_unload()
            merged_logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        metrics["lora_merge_max_abs_diff"] = float((adapter_logits - merged_logits).abs().max())
    models.save(model, tokenizer, ctx.out_dir)
    after = perplexity(model, held["test"], tokenizer.pad_token_id)
    val = perplexity(model, held["validation"], tokenizer.pad_token_id)
    metrics.update(counts, perplexity=after, val_perplexity=val, perplexity_before=before,
                   perplexity_gain=1 - after / before, eval_loss=math.log(val),
                   trainable_fraction=counts["params_trainable"] / counts["params_total"],
                   size_mb=models.size_mb(ctx.out_dir / "model.safetensors"), train_seconds=train_seconds,
                   train_steps=trainer.state.global_step)
    if settings.rouge:
        scores, details["rouge_examples"] = rouge_scores(
            settings.rouge, scored, answered_before, answer(model, scored["prompt"], settings.rouge.answer_tokens))
        metrics.update(scores)
    prompts = prompts_of(data.splits["test"], settings, data.plain)[:4]
    details.update(loss_on="response tokens" if separator is not None else "every token",
                   sample_generations=sample_generations(model, tokenizer, prompts, settings.new_tokens,
                                                         task.max_length, separator))
    return metrics, details


def rouge_scores(settings, records: dict, before: list[str], after: list[str]) -> tuple[dict, list[dict]]:
    """rouge_l (after), rouge_l_before, rouge_l_gain (absolute) and baseline_lead_rouge_l of `records`' answers,
    and the first few answers beside their reference (for the manifest)."""
    from lifecycle.workloads.decoders.rouge import lead_sentences, rouge_l

    refs = records["response"]
    out = {"rouge_l": rouge_l(after, refs), "rouge_l_before": rouge_l(before, refs)}
    out["rouge_l_gain"] = out["rouge_l"] - out["rouge_l_before"]
    leads = [lead_sentences(t, settings.lead_sentences) for t in records.get("lead", [])]
    if leads:
        out["baseline_lead_rouge_l"] = rouge_l(leads, refs)
    examples = [
        {"prompt": p[:300], "reference": r, "before": b, "after": a, **({"lead": leads[i]} if leads else {})}
        for i, (p, r, b, a) in enumerate(zip(records["prompt"], refs, before, after)) if i < 3]
    return out, examples


def answers(model, prompts: list[str], new_tokens: int, tokenizer, context: int, separator) -> list[str]:
    """The greedy answer to each prompt (up to `new_tokens`, ending at end-of-text), as text."""
    tokens = continuations(model, tokenizer, prompts, new_tokens, context, separator).tokens
    return [tokenizer.decode([int(t) for t in row if t >= 0 and t != tokenizer.eos_token_id]) for row in tokens]


def sample_generations(model, tokenizer, prompts, new_tokens, context, separator) -> list[dict]:
    texts = answers(model, prompts, new_tokens, tokenizer, context, separator)
    return [{"prompt": prompt, "text": text} for prompt, text in zip(prompts, texts)]
