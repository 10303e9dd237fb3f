"""The small runtime shared by the edge bundle, the BentoML service and the export/quantize/serve
stages: onnxruntime + tokenizers + numpy, nothing else (it must run in a bare virtualenv).

    from lifecycle.edge import Predictor
    p = Predictor.open("model.zip")          # or an export/quantize artifact directory
    p.predict(["some text"])                 # [{"label": ..., "score": ..., "scores": {...}}]

A directory or zip holds model.onnx, tokenizer.json, labels.json and schema.json. When it also holds
manifest.json, every listed file's sha256 is checked before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported

import numpy as np  # noqa: E402

MODEL, TOKENIZER, LABELS, SCHEMA, MANIFEST = "model.onnx", "tokenizer.json", "labels.json", "schema.json", "manifest.json"


class BundleError(Exception):
    """A bundle that is incomplete, tampered with, or points outside itself."""


class Predictor:
    def __init__(self, root: Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.root = Path(root)
        self.schema = json.loads((self.root / SCHEMA).read_text())
        self.labels: list[str] = json.loads((self.root / LABELS).read_text())
        self.max_length: int = self.schema["max_length"]
        self.tokenizer = Tokenizer.from_file(str(self.root / TOKENIZER))
        self.tokenizer.enable_truncation(self.max_length)
        pad = self.schema.get("pad_token", "[PAD]")
        self.tokenizer.enable_padding(pad_id=self.schema.get("pad_token_id", 0), pad_token=pad)
        _check_external_data(self.root / MODEL)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:  # servers: an idle spinning pool burns cores that request handling needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.root / MODEL), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, spinning: bool = True) -> Predictor:
        path = Path(path)
        if path.is_file() and zipfile.is_zipfile(path):
            path = _extract(path)
        if not (path / MODEL).is_file():
            raise BundleError(f"{path}: no {MODEL}; pass an export/quantize artifact or a bundle made by `lifecycle bundle`")
        if (path / MANIFEST).is_file():
            verify(path)
        return cls(path, threads, spinning)

    def encode(self, texts: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        if pad_to:
            self.tokenizer.enable_padding(pad_id=self.schema.get("pad_token_id", 0),
                                          pad_token=self.schema.get("pad_token", "[PAD]"), length=pad_to)
        encs = self.tokenizer.encode_batch(list(texts))
        if pad_to:
            self.tokenizer.enable_padding(pad_id=self.schema.get("pad_token_id", 0),
                                          pad_token=self.schema.get("pad_token", "[PAD]"))
        feeds = {
            "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encs], dtype=np.int64),
        }
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text before truncation (for servers that reject over-long input)."""
        self.tokenizer.no_truncation()
        try:
            return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]
        finally:
            self.tokenizer.enable_truncation(self.max_length)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        outs = [self.session.run(None, self.encode(texts[i : i + batch_size]))[0] for i in range(0, len(texts), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, texts: list[str]) -> list[dict]:
        logits = self.logits(texts)
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append({"label": self.labels[best], "score": float(row[best]),
                        "scores": {name: float(p) for name, p in zip(self.labels, row)}})
        return out


def verify(root: Path) -> dict:
    """Check every file listed in manifest.json against its sha256; returns the manifest."""
    manifest = json.loads((root / MANIFEST).read_text())
    for rel, digest in manifest.get("files", {}).items():
        f = root / rel
        if not f.is_file():
            raise BundleError(f"{f}: listed in the manifest but missing")
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise BundleError(f"{f}: does not match its sha256 in the manifest (tampered or corrupt)")
    return manifest


def _check_external_data(model_path: Path) -> None:
    """Refuse ONNX external-data locations that leave the bundle (absolute, `..`, symlinks)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    root = model_path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = model_path.parent / location
        if os.path.isabs(location) or ".." in Path(location).parts or target.is_symlink() \
                or not target.resolve().is_relative_to(root):
            raise BundleError(f"{model_path}: external data location '{location}' points outside the bundle")


def _extract(zip_path: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="lifecycle-bundle-"))
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.startswith("/") or ".." in Path(name).parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise BundleError(f"{zip_path}: member '{name}' would be written outside the bundle")
        zf.extractall(out)
    return out
