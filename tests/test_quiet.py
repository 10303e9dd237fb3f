"""lifecycle.quiet: each filter hides its third-party message where that message really comes up (a real
torch.onnx export, a real Trainer run), the same call without the filter does show it (so no filter
matches nothing after a transformers upgrade), and another warning of the same kind still shows."""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from lifecycle import quiet


def tiny_bert(position: str = "absolute"):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, position_embedding_type=position)
    return BertForSequenceClassification(config)


class Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def shown():
    """What reaches the console: every warning (each time it is raised) and the BERT module's log records."""
    logging.Logger.warning_once.cache_clear()  # transformers logs the attention notice once per process
    handler = Messages()
    logger = logging.getLogger(quiet.SDPA_LOGGER)
    logger.addHandler(handler)
    out: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield out
    finally:
        logger.removeHandler(handler)
    out += [str(w.message) for w in caught] + handler.messages


def has(messages: list[str], text: str) -> bool:
    return any(text in m for m in messages)


def test_onnx_export_hides_the_traced_constant_warning_only(tmp_path):
    from torch.jit import TracerWarning

    model = tiny_bert().eval()
    ids, mask = torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}

    def export(name: str) -> None:  # as lifecycle.stages.export.export_torch calls it
        with torch.inference_mode():
            torch.onnx.export(model, (ids, mask), str(tmp_path / name), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}})

    constant = "registered as constants in the trace"
    with shown() as bare:
        export("bare.onnx")
    assert has(bare, constant), bare
    with shown() as hushed, quiet.onnx_export():
        export("quiet.onnx")
        warnings.warn("another trace problem", TracerWarning, stacklevel=1)
    assert not has(hushed, constant) and has(hushed, "another trace problem"), hushed


def test_training_hides_the_mtime_and_relative_attention_notices(tmp_path):
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": torch.randint(5, 100, (8,)), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(8)]

    def train(out: str) -> None:
        # A checkpoint every step, at most one kept: the rotation compares the mtimes of checkpoints
        # written milliseconds apart. relative_key: the first forward pass falls back from SDPA.
        args = TrainingArguments(str(tmp_path / out), max_steps=3, per_device_train_batch_size=4, save_steps=1,
                                 save_total_limit=1, report_to=[], use_cpu=True, disable_tqdm=True,
                                 logging_strategy="no")
        Trainer(model=tiny_bert("relative_key"), args=args, train_dataset=rows).train()

    mtime, sdpa = "mtime may not be reliable", quiet.SDPA_FALLBACK
    with shown() as bare:
        train("bare")
    assert has(bare, mtime) and has(bare, sdpa), bare
    with shown() as hushed, quiet.training():
        train("quiet")
        warnings.warn("another trainer problem", UserWarning, stacklevel=1)
    assert not has(hushed, mtime) and not has(hushed, sdpa) and has(hushed, "another trainer problem"), hushed
    with shown() as after:  # the filters end with the block
        logging.getLogger(quiet.SDPA_LOGGER).warning_once(sdpa + " ...")
    assert has(after, sdpa)


def test_onnx_export_hides_the_vit_shape_check_warnings_only(tmp_path):
    """A ViT's patch embedding checks channels and size against its config; traced, the checks warn
    (what the image workload's export printed). Hidden inside quiet.onnx_export, shown outside it."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                                num_labels=2)).eval()

    def export(name: str) -> None:  # as lifecycle.workloads.images.model.export_onnx calls it
        with torch.inference_mode():
            torch.onnx.export(model, (torch.zeros(2, 3, 16, 16),), str(tmp_path / name), input_names=["pixel_values"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})

    boolean = "Converting a tensor to a Python boolean"
    with shown() as bare:
        export("bare.onnx")
    assert has(bare, boolean), bare
    with shown() as hushed, quiet.onnx_export():
        export("quiet.onnx")
    assert not has(hushed, boolean), hushed


def test_new_head_hides_the_newly_initialised_notice_only(tmp_path):
    """An encoder loaded into a classifier (what finetune does with a pre-trained parent): transformers logs
    which weights are new and that the model should be trained. Hidden inside quiet.new_head only."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    handler = Messages()
    logger = logging.getLogger(quiet.LOADING_LOGGER)
    logger.addHandler(handler)
    try:
        AutoModelForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True)
        bare, handler.messages = handler.messages, []
        with quiet.new_head():
            AutoModelForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True)
            logger.warning("another loading problem")
        hushed = handler.messages
    finally:
        logger.removeHandler(handler)
    assert has(bare, "newly initialized"), bare
    assert not has(hushed, "newly initialized") and has(hushed, "another loading problem"), hushed
