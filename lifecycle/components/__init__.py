"""Components: modules named for what they are, shared by stages so that no stage imports another.

- classification: label space, encoding, loss (and its Trainer), scoring, loading a classifier, collapse
- language_model: sparse masked-LM head, LM blocks and Trainer, the LM training loop, perplexity
- onnx: exporters, fusions, runtime files, parity, onnxruntime latency and scoring
- training: TrainConfig, Trainer arguments, callbacks (early stopping, divergence), crash-resume
- checkpoints: which Trainer checkpoint a crashed run can resume from
- inference: batched tokenize-and-forward over texts (one loop for logits, embeddings, features)
- probe: a linear probe of frozen features (probe_accuracy), run after (pre-)training

Stages sit above this layer and the CLI/pipeline above them (import-linter contracts in pyproject.toml).
"""
