"""Third-party messages known to be harmless in lifecycle's runs, hidden where the call that prints them
is made. Each filter matches one message from one module, so any other warning (another TracerWarning
included) still shows. Nothing heavy is imported until a filter is used.

    with quiet.training():      # around Trainer.train
    with quiet.onnx_export():   # around torch.onnx.export (or optimum's exporter) of a transformers model
    with quiet.relative_attention():  # around any other forward pass of a BERT with relative positions
    with quiet.new_head():      # around from_pretrained into a classifier with a new head
    with quiet.lora_on_conv1d():  # around peft's get_peft_model on a GPT-2
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# transformers.models.bert.modeling_bert, logged once per process (logger.warning_once), not a warning
SDPA_FALLBACK = "BertSdpaSelfAttention is used but"
SDPA_LOGGER = "transformers.models.bert.modeling_bert"
# transformers.modeling_utils, when from_pretrained builds a model with weights the checkpoint lacks
NEW_WEIGHTS = ("Some weights of ", "newly initialized")
LOADING_LOGGER = "transformers.modeling_utils"
MTIME = r"mtime may not be reliable on this filesystem"
TRACED_CONSTANT = r"torch\.tensor results are registered as constants in the trace"
TRACED_BOOLEAN = r"Converting a tensor to a Python boolean might cause the trace to be incorrect"
SHAPE_CHECKS = r"transformers\.(models\.vit\.modeling_vit|cache_utils|masking_utils|integrations\.sdpa_attention)$"
ADVANCED_INDEXING = r"Exporting aten::index operator of advanced indexing"
FAN_IN_FAN_OUT = r"fan_in_fan_out is set to False but the target module is `Conv1D`"


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str, containing: str = ""):
        super().__init__()
        self.prefix, self.containing = prefix, containing

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith(self.prefix) and self.containing in msg)


@contextlib.contextmanager
def relative_attention():
    """A BERT with position_embedding_type relative_key(_query) (the quickstart's pretrained model):
    PyTorch's scaled_dot_product_attention has no relative positions, so transformers' default
    BertSdpaSelfAttention runs the eager attention instead (its parent's forward: the same computation)
    and says so once per process. Nothing is lost; the model is trained, evaluated and exported exactly
    as with attn_implementation="eager", which is what the message advises."""
    logger = logging.getLogger(SDPA_LOGGER)
    drop = _DropPrefix(SDPA_FALLBACK)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def new_head():
    """from_pretrained of an encoder (or another task's classifier) into a classifier: transformers names the
    weights the checkpoint lacks (the new head, a pooler) and says the model should be trained, which is
    what the stage does next. The names are kept in the artifact's manifest (`newly_initialised`)."""
    logger = logging.getLogger(LOADING_LOGGER)
    drop = _DropPrefix(*NEW_WEIGHTS)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def training():
    """Trainer.train. Besides the attention notice above (the first forward pass of a run is usually
    here): the Trainer orders checkpoint-N folders by mtime to pick which ones save_total_limit removes,
    and when they were written less than a second apart (small models on fast steps) it warns and
    orders them by step number instead: the order it would have found anyway, and the one
    lifecycle.components.checkpoints.last_checkpoint uses."""
    with warnings.catch_warnings(), relative_attention():
        warnings.filterwarnings("ignore", message=MTIME, category=UserWarning, module=r"transformers\.trainer$")
        yield


@contextlib.contextmanager
def onnx_export():
    """torch.onnx.export (the TorchScript tracer) of a transformers model. The attention mask helper
    computes `torch.tensor(1.0, dtype=dtype) - mask`, and the tracer warns that the tensor becomes a
    constant of the graph: it is the constant 1.0 whatever the input, so the graph is right (the export
    stage's parity check compares it with PyTorch on real texts). Tracing also runs a forward pass, so
    the attention notice above is hidden too.

    Python conditions on tensor shapes become constants of a traced graph, and the tracer warns of each:
    - a ViT (the image workload): its patch embedding checks the input's channels and size against the
      config and raises on a mismatch. The graph's only dynamic axis is the batch, and every image reaches
      it through the bundle's ImagePreprocessing, resized to the model's size and channels.
    - a decoder with its KV cache (optimum's exporter, the generation workload): whether the cache is
      empty, whether the mask needs padding, and `is_causal` (false whenever a mask is given, and the
      graph always takes one). The export stage checks the graph's greedy answers and logits against
      PyTorch with and without a past, so a branch frozen the wrong way fails a gate.
    The TorchScript exporter also warns that an advanced-indexing op goes wrong for negative indices;
    the graphs index with positions and token ids, and the same parity checks would show it."""
    from torch.jit import TracerWarning

    with warnings.catch_warnings(), relative_attention():
        warnings.filterwarnings("ignore", message=TRACED_CONSTANT, category=TracerWarning,
                                module=r"transformers\.modeling_attn_mask_utils$")
        warnings.filterwarnings("ignore", message=TRACED_BOOLEAN, category=TracerWarning, module=SHAPE_CHECKS)
        warnings.filterwarnings("ignore", message=ADVANCED_INDEXING, category=UserWarning,
                                module=r"torch\.onnx\._internal\.torchscript_exporter\.symbolic_opset11$")
        yield


@contextlib.contextmanager
def lora_on_conv1d():
    """peft's get_peft_model on a GPT-2 (the decoders workload): GPT-2 stores its projections as Conv1D
    (weights transposed), so peft sets fan_in_fan_out=True for them itself and says so, as designed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FAN_IN_FAN_OUT, category=UserWarning, module=r"peft\.tuners\.lora\.layer$")
        yield
