"""`lifecycle export-hf RUN_DIR OUT_DIR`: a Hub-ready folder of a run's final model, to upload with one
call (`huggingface_hub.upload_folder(repo_id=..., folder_path=OUT_DIR)`).

The folder holds the last Hugging Face model of the run (safetensors weights, config, tokenizer or
preprocessor files), every ONNX graph the run exported (`onnx/<stage>/`), and README.md: the run's model
card (lifecycle.model_card) under the Hub's YAML metadata header (library_name, pipeline_tag, base_model,
datasets, metrics and their values as a model-index). A run `lifecycle gate` refuses is refused here too,
and the folder appears complete or not at all (built beside OUT_DIR, renamed when done).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lifecycle import LifecycleError
from lifecycle.artifact import MANIFEST, Artifact

# Top-level files of a model artifact that a Hub model repo carries (predictions/ and the manifest stay home).
MODEL_FILES = ("*.safetensors", "*.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken")
ONNX_FILES = ("*.onnx", "*.onnx.data", "*.onnx_data")
# The Hub's pipeline tag for a task's (inputs kind, answers kind); a pair it has no tag for gets none.
PIPELINE_TAGS = {("text", "labels"): "text-classification", ("text", "vector"): "feature-extraction",
                 ("prompts", "tokens"): "text-generation", ("rows", "labels"): "tabular-classification",
                 ("rows", "value"): "tabular-regression", ("images", "labels"): "image-classification",
                 ("images", "vector"): "image-feature-extraction", ("audio", "labels"): "audio-classification"}
# Quality metrics reported on the test split, listed in the header with their values (latency, size and
# training figures stay in the card's body).
QUALITY = ("accuracy", "f1_macro", "f1_micro", "f1", "precision", "recall", "roc_auc", "spearman", "knn_accuracy",
           "perplexity", "rouge_l", "mae", "rmse", "r2")


def export_hf(run_dir: str | Path, out_dir: str | Path) -> Path:
    from lifecycle.verdict import read_record, require

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    record = read_record(run_dir)  # a directory that is not a run is named as such
    if out_dir.exists():
        raise LifecycleError(f"{out_dir} exists; export-hf writes a new folder: name another or remove it")
    require(run_dir, "export to the Hub format")  # refuses (exit 3) what `lifecycle gate` refuses
    names = [s.get("name") or s["kind"] for s in record["pipeline"]["stages"]]
    arts = [Artifact.load(run_dir / n) for n in names if (run_dir / n / MANIFEST).is_file()]
    models = [a for a in arts if a.kind == "hf-model"]
    if not models:
        raise LifecycleError(f"{run_dir}: no stage wrote a Hugging Face model (finetune, distill, adapt, pretrain)")
    final = models[-1]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _copy(final.path, tmp, MODEL_FILES, skip={MANIFEST})
        for art in arts:
            if art.kind == "onnx-model":
                _copy(art.path, tmp / "onnx" / art.path.name, ONNX_FILES)
        (tmp / "README.md").write_text(card(final, record), encoding="utf-8")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def card(art: Artifact, record: dict) -> str:
    """README.md: the Hub's metadata header (huggingface_hub.ModelCardData) over the run's model card."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from lifecycle import model_card, workloads

    pipeline = record["pipeline"]
    task = pipeline.get("task") or {}
    kinds = workloads.task(task["type"]) if task.get("type") else None
    tag = PIPELINE_TAGS.get((kinds.inputs_kind, kinds.answers_kind)) if kinds else None
    sources = pipeline.get("data", {})
    hub_data = sorted({s["hub"] for s in sources.values() if s.get("hub")})
    # the first Hub model of the chain (oldest stage first) is the one the run started from
    bases = [pin["id"] for step in model_card.lineage(art) for field, pin in step.get("hub", {}).items()
             if not field.startswith("data.")]
    metrics = {k: v for k, v in art.metrics.items() if k in QUALITY and isinstance(v, int | float)}
    data_source = sources.get(task.get("data"), {})
    evals = [EvalResult(task_type=tag, dataset_type=data_source.get("hub") or task.get("data", "data"),
                        dataset_name=task.get("data", "data"), dataset_config=data_source.get("config"),
                        dataset_split="test", metric_type=name, metric_value=float(value))
             for name, value in sorted(metrics.items())] if tag else None
    data = ModelCardData(library_name="transformers", pipeline_tag=tag, base_model=bases[0] if bases else None,
                         datasets=hub_data or None, metrics=sorted(metrics) or None, eval_results=evals or None,
                         model_name=f"{pipeline.get('name')}-{art.manifest.get('stage')}", tags=["lifecycle"])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{model_card.render(art)}"))


def _copy(src: Path, dst: Path, patterns: tuple[str, ...], skip: set[str] = frozenset()) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted({f for p in patterns for f in src.glob(p) if f.is_file() and f.name not in skip}):
        shutil.copy2(f, dst / f.name)
