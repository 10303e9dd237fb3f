"""LoRA adapters (peft) for the models the task recipes train themselves (tables, images): adapters on the
encoder's attention projections, the new head trained in full, merged into the weights before the artifact
is written so that export and distill see a plain model (the adapter kept beside it in `adapter/`)."""

from __future__ import annotations

from pathlib import Path


def attention_lora(model, lora, head: str | None):
    """`model` with LoRA adapters on its attention projections (`query`/`value`, the names BERT-style and
    ViT attention share, unless the stage's `lora.target_modules` names others); `head` (the module name of
    the new head; None for an encoder without one) trained in full. The embeddings (a table's feature tokenizer, an image's patch
    projection) stay as pre-training left them."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules or ["query", "value"],
                                            modules_to_save=[head] if head else None))


def merged(model, out_dir: Path, outputs) -> tuple[object, dict]:
    """(the plain model with the adapters merged into its weights, {"lora_merge_max_abs_diff"}): the adapter
    is saved to out_dir/adapter first, and `outputs(model)` (a numpy array) is compared before and after."""
    model.save_pretrained(Path(out_dir) / "adapter", safe_serialization=True)
    before = outputs(model)
    model = model.merge_and_unload()
    return model, {"lora_merge_max_abs_diff": float(abs(before - outputs(model)).max())}
