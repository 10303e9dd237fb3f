"""Spoken-word classification: a small audio spectrogram transformer (lifecycle.workloads.audio.model) on the
clips of an audio source (lifecycle.data.audio: an audiofolder, or files whose names or a CSV give their
label and groups), one class per clip.

Graph: input `input_values` (batch, frames, mel bins) float32, made from a clip by
lifecycle.edge.AudioPreprocessing with the model's transformers feature-extractor config
(preprocessor_config.json beside the graph: rate, mel bins, frames, mean/std fitted on the training
clips); output `logits` (batch, classes). Edge method `answer` (WAV/FLAC bytes or float32 waveforms at the
model's rate); route POST /classify_audio (audio/wav, audio/flac, multipart files, or {"audio": [base64,
...]}). Scores: accuracy, macro-F1, AUROC; fidelity to the fp32 parent as for other classifiers; the MFCC
baseline beside it, and the sources named in the data's `audio.also_test` with a bootstrap interval.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.evaluation.classes import CLASS_SCORES
from lifecycle.tasks import LABELS, Artifacts, Edge, Inputs, Task, Training
from lifecycle.tasks.kinds import (
    class_answer_scores,
    class_evaluate,
    class_scores,
    class_test_metrics,
    split_labels,
)


# ------------------------------------------------------------------------------------ the inputs kind
def clips(split) -> list[bytes]:
    """A split's clips as a client sends them: 32-bit float WAV files at the model's rate (lossless, so the
    edge runtime and the service decode the very samples the model was trained on)."""
    from lifecycle.edge import wav_bytes

    return [wav_bytes(wave, split.sampling_rate) for wave in split.waves]


def preprocessor(src: Path, task):
    from lifecycle.edge import FEATURE_EXTRACTOR, AudioPreprocessing

    return AudioPreprocessing.load(src / FEATURE_EXTRACTOR)


def export_graph(declared, model, preprocessor, path, opset):
    from lifecycle.workloads.audio.model import export_onnx

    export_onnx(model, preprocessor.transform([preprocessor.blank()] * 2), path, opset, output=declared.answers.output)


def write_runtime_files(declared, out, src, preprocessor, task, input_names, model):
    import json
    import shutil

    from lifecycle.edge import FEATURE_EXTRACTOR

    for name in (FEATURE_EXTRACTOR, "config.json"):
        shutil.copy2(src / name, out / name)
    (out / "labels.json").write_text(json.dumps(declared.labels(model)))
    shape = ["batch", model.config.max_length, model.config.num_mel_bins]
    schema = {"inputs": {"input_values": {"dtype": "float32", "shape": shape}}, "preprocessor": FEATURE_EXTRACTOR,
              **declared.graph_schema(model)}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))


def base64_text(clip: bytes) -> str:
    import base64

    return base64.b64encode(clip).decode("ascii")


# {"audio": [base64 WAV/FLAC, ...]}; onnxruntime's transformer fusions look for input_ids and a mask
AUDIO = Inputs(kind="audio", reads="audio", request_key="audio", read=clips, preprocessor=preprocessor,
               export_graph=export_graph, write_runtime_files=write_runtime_files,
               sample=lambda x: {"audio": base64_text(x)}, wire=lambda items: [base64_text(x) for x in items])


# ------------------------------------------------------------------------------------ the task




def torch_model(src: Path):
    from transformers import ASTForAudioClassification

    return ASTForAudioClassification.from_pretrained(src).eval()


def reference(model, preprocessing, waves, task=None, batch_size=64):
    from lifecycle.workloads.audio.model import predict

    return predict(model, preprocessing.transform(list(waves)), batch_size)




TASK = Task(
    name="audio-classification", inputs=AUDIO, answers=LABELS, scores=CLASS_SCORES,
    fidelity=("argmax_agreement", "logit_max_abs_diff"),
    artifacts=Artifacts(("classifier",), "onnx-classifier", export_hint=(
        "export writes a classifier's logits: fine-tune the model first (a finetune stage between them)")),
    edge=Edge("answer", "/classify_audio"), torch_model=torch_model, reference=reference,
    score=class_scores(class_evaluate, split_labels, AUDIO),
    served_scores=class_answer_scores(class_evaluate, split_labels), train=Training(class_evaluate, class_test_metrics))
