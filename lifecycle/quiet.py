"""Third-party messages known to be harmless in lifecycle's runs, hidden where the call that prints them
is made. Each filter matches one message from one module, so any other warning (another TracerWarning
included) still shows. Nothing heavy is imported until a filter is used.

    with quiet.training():      # around Trainer.train
    with quiet.onnx_export():   # around torch.onnx.export of a transformers model
    with quiet.relative_attention():  # around any other forward pass of a BERT with relative positions
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# transformers.models.bert.modeling_bert, logged once per process (logger.warning_once), not a warning
SDPA_FALLBACK = "BertSdpaSelfAttention is used but"
SDPA_LOGGER = "transformers.models.bert.modeling_bert"
MTIME = r"mtime may not be reliable on this filesystem"
TRACED_CONSTANT = r"torch\.tensor results are registered as constants in the trace"


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


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
    the attention notice above is hidden too."""
    from torch.jit import TracerWarning

    with warnings.catch_warnings(), relative_attention():
        warnings.filterwarnings("ignore", message=TRACED_CONSTANT, category=TracerWarning,
                                module=r"transformers\.modeling_attn_mask_utils$")
        yield
