"""pretrain: a language model from scratch on an unlabelled corpus.

bert-* presets train an encoder with masked-LM, gpt-* presets a decoder with causal-LM. A tokenizer
(WordPiece / byte-level BPE) is trained on the training split, the corpus is packed into fixed-length
blocks, and the transformers Trainer does the rest: gradient accumulation, warm-up + decay,
precision, gradient checkpointing, periodic evaluation, checkpoints in the scratch directory and
automatic resume after a crash, DDP under `torchrun`. The loop lives in
`lifecycle.components.language_model`, which the `adapt` stage shares (continued pre-training is
this loop with an initial checkpoint, not a second copy).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.components.probe import Probe
from lifecycle.components.training import TrainConfig
from lifecycle.embedding import Contrastive
from lifecycle.models import PRESETS, ModelSource
from lifecycle.schema import Holds, StageBase, TaskType, Trains, unset
from lifecycle.workloads import SOURCE_INPUTS, declared_objective


class Config(StageBase):
    """The `pretrain` stage: a language model trained from scratch on an unlabelled corpus (`lc.Pretrain`)."""

    kind: Literal["pretrain"] = "pretrain"  # YAML must name it; in Python the class does
    reads_parent = False
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    data: str = Field(description="name of the corpus source in `data` (its labels, if any, are ignored)")
    model: ModelSource = ModelSource(preset="bert-tiny")  # a preset: bert-* -> masked-LM, gpt-* -> causal-LM
    block_size: int = Field(128, ge=8)  # tokens per packed block: longer = more context, quadratic attention cost
    mlm_probability: float = Field(0.15, gt=0, lt=1)  # masked-LM only
    train: TrainConfig = TrainConfig(lr=5e-4, epochs=1)  # from scratch: a higher lr than fine-tuning
    probe: Probe | None = None  # a labelled task scored on frozen features after training: probe_accuracy
    num_proc: int | None = Field(None, gt=0, description="tokenization workers; pays off above ~10 MB of text")
    # None: masked-LM for bert-* presets, causal-LM for gpt-*. contrastive: sentence embeddings
    # (lifecycle.workloads.text.contrastive; settings in `contrastive:`), encoders only. masked-feature: a table model
    # on a table source (lifecycle.workloads.tables.masked_features; `mlm_probability` is the share of cells masked).
    # masked-image: a vision transformer on an image source (lifecycle.workloads.images.masked, SimMIM;
    # `mlm_probability` is the share of patches masked). contrastive on an image source: SimCLR on two
    # augmented views (lifecycle.workloads.images.contrastive; `contrastive.temperature` only).
    # masked-spectrogram: an audio spectrogram transformer on an audio source (lifecycle.workloads.audio.masked).
    # Any objective a workload's recipe table declares for `pretrain` is accepted (lifecycle recipes).
    objective: str | None = Field(None, exclude_if=unset)
    contrastive: Contrastive | None = Field(None, exclude_if=unset)

    @field_validator("objective")
    @classmethod
    def _declared(cls, objective: str | None) -> str | None:
        return declared_objective("pretrain", objective)

    @model_validator(mode="after")
    def _from_scratch(self) -> Config:
        if not self.model.preset:
            raise ValueError("model: pretrain starts from a preset; to continue from existing weights use an "
                             "`adapt` stage with `model: {path: ...}` or `model: {package: ...}`")
        natural = "mlm" if self.model.family == "bert" else "clm"
        if self.objective not in (None, natural) and (natural == "clm" or self.objective == "clm"):
            raise ValueError(f"objective: '{self.objective}' does not fit preset {self.model.preset} "
                             f"({'encoder: any objective but clm' if natural == 'mlm' else 'decoder: clm'})")
        if self.contrastive is not None and self.objective != "contrastive":
            raise ValueError("contrastive: settings for `objective: contrastive` only")
        fields = {**PRESETS[self.model.preset](), **self.model.overrides}
        positions = fields.get("max_position_embeddings", fields.get("n_positions"))
        if positions and self.block_size > positions:
            raise ValueError(f"block_size: {self.block_size} tokens exceed the model's {positions} positions")
        return self

    def trains(self) -> Trains:
        return Trains(self.train, source=self.model, data=self.data, seq=self.block_size,
                      masked_fraction=self.mlm_probability)

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        return ()

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        if self.objective == "contrastive":
            return "encoder"
        return "masked-lm" if self.model.family == "bert" else "causal-lm"  # every other objective: an encoder's

    def data_refs(self) -> dict[str, tuple[str, bool]]:
        return {"data": (self.data, False), **({"probe.data": (self.probe.data, True)} if self.probe else {})}

    def files(self) -> dict[str, str]:
        pairs = self.contrastive.pairs if self.contrastive else None
        return {"contrastive.pairs.path": pairs.path} if pairs else {}

    def recipe_key(self, task: TaskType | None, sources: dict, consumed: Holds | None) -> tuple[str, str]:
        natural = "mlm" if self.model.family == "bert" else "clm"
        return SOURCE_INPUTS[sources["data"].reads], self.objective or natural


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    return ctx.recipe(cfg, parent)
