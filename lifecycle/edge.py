"""The small runtime shared by the edge bundle, the BentoML service and the export/quantize/serve
stages: onnxruntime + tokenizers + numpy and the standard library, nothing else. This file has no
import from the rest of `lifecycle`, so it can be copied alone onto a device.

    from lifecycle.edge import Predictor
    p = Predictor.open("model.zip")          # or an export/quantize artifact directory
    p.predict(["some text"])                 # [{"label": ..., "score": ..., "scores": {...}}]
    p.embed(["some text"])                   # an embedding model (schema task "embedding"): (n, dim) array
    p.check()                                # re-runs the predictions the pipeline recorded

A directory or zip holds model.onnx, tokenizer.json, labels.json and schema.json. When it holds
manifest.json (a bundle always does), every file's sha256 is checked before anything is loaded and
files the manifest does not list are refused. ONNX external data is accepted only when every location
is a plain relative path to a regular file inside the bundle: no absolute paths, no `..`, no symlinks.
With `trusted_keys=` (public Ed25519 PEM files), open() also requires manifest.sig, a signature over
manifest.json by one of those keys (lifecycle.signing writes it; `cryptography` is imported only then).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import weakref
import zipfile
from pathlib import Path, PurePosixPath

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported

import numpy as np  # noqa: E402

MODEL, TOKENIZER, LABELS, SCHEMA, MANIFEST = "model.onnx", "tokenizer.json", "labels.json", "schema.json", "manifest.json"
REQUIRED = (MODEL, TOKENIZER, LABELS, SCHEMA)
SIGNATURE = "manifest.sig"  # signature over manifest.json: the one file the manifest cannot list


class BundleError(Exception):
    """A bundle that is incomplete, tampered with, or points outside itself."""


class Predictor:
    def __init__(self, root: Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.root = Path(root)
        self.manifest: dict | None = None  # set by open() when the source has a manifest
        self.schema = json.loads((self.root / SCHEMA).read_text())
        self.labels: list[str] = json.loads((self.root / LABELS).read_text())
        self.max_length: int = self.schema["max_length"]
        self.tokenizer = Tokenizer.from_file(str(self.root / TOKENIZER))
        self.tokenizer.enable_truncation(self.max_length)
        self._padding = {"pad_id": self.schema.get("pad_token_id", 0), "pad_token": self.schema.get("pad_token", "[PAD]")}
        self.tokenizer.enable_padding(**self._padding)
        check_external_data(self.root / MODEL)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:  # servers: an idle spinning pool burns cores that request handling needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.root / MODEL), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def task(self) -> str:
        """"classification" (output: logits) or "embedding" (output: pooled, normalised embeddings)."""
        return self.schema.get("task", "classification")

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, spinning: bool = True,
             trusted_keys: list | None = None) -> Predictor:
        """Open a bundle zip or a model directory, verifying it first (see the module docstring).
        `trusted_keys` (public key PEM paths or bytes): refuse it unless manifest.sig verifies with one."""
        path = source = Path(path)
        extracted = None
        if path.is_file() and zipfile.is_zipfile(path):
            path = extracted = _extract(path)
            if not (path / MANIFEST).is_file():
                shutil.rmtree(extracted, ignore_errors=True)
                raise BundleError(f"{source}: a bundle needs {MANIFEST}; write it with `lifecycle bundle`")
        try:
            for name in REQUIRED:
                if (path / name).is_symlink():
                    raise BundleError(f"{path / name}: symlinks are not allowed in a bundle")
                if not (path / name).is_file():
                    raise BundleError(f"{path}: no {name}; pass an export/quantize artifact or a bundle made by "
                                      "`lifecycle bundle`")
            manifest = verify(path) if (path / MANIFEST).is_file() else None
            if trusted_keys is not None:
                if manifest is None or not (path / SIGNATURE).is_file():
                    raise BundleError(f"{source}: unsigned (no {SIGNATURE}); trusted keys are configured, so only "
                                      "bundles written with `lifecycle bundle --sign` are accepted")
                check_signature((path / MANIFEST).read_bytes(), (path / SIGNATURE).read_bytes(), trusted_keys, source)
            predictor = cls(path, threads, spinning)
        except BaseException:
            if extracted:
                shutil.rmtree(extracted, ignore_errors=True)
            raise
        predictor.manifest = manifest
        if extracted:  # the session holds the weights now; the files go when the predictor does
            weakref.finalize(predictor, shutil.rmtree, extracted, True)
        return predictor

    def encode(self, texts: list[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        if pad_to:
            self.tokenizer.enable_padding(**self._padding, length=pad_to)
        try:
            encs = self.tokenizer.encode_batch(list(texts))
        finally:
            if pad_to:
                self.tokenizer.enable_padding(**self._padding)
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
        texts = list(texts)
        outs = [self.session.run(None, self.encode(texts[i : i + batch_size]))[0] for i in range(0, len(texts), batch_size)]
        # float32 always: an fp16 graph may return half-precision logits
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, len(self.labels)), dtype=np.float32)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings (n, dim), float32: pooling and normalisation are inside the graph."""
        if self.task != "embedding":
            raise BundleError(f"{self.root}: a {self.task} model has no embeddings; use predict()")
        return self.logits(texts, batch_size)

    def predict(self, texts: list[str]) -> list[dict]:
        if self.task != "classification":
            raise BundleError(f"{self.root}: an {self.task} model predicts no labels; use embed()")
        logits = self.logits(texts)
        z = logits - logits.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append({"label": self.labels[best], "score": float(row[best]),
                        "scores": {name: float(p) for name, p in zip(self.labels, row)}})
        return out

    def check(self, atol: float = 1e-4) -> int:
        """Re-run the sample predictions recorded by the pipeline (in the manifest) and raise
        BundleError if a label differs or a score moves by more than atol; returns how many matched.
        A device runs this once after install to prove its runtime reproduces the pipeline."""
        m = self.manifest or {}
        expected = m.get("sample_predictions") or m.get("details", {}).get("sample_predictions") or []
        if not expected:
            raise BundleError(f"{self.root}: the manifest records no sample predictions to check")
        if self.task == "embedding":
            got = self.embed([e["text"] for e in expected])
            for e, g in zip(expected, got):
                if float(np.abs(np.asarray(e["embedding"]) - g).max()) > atol:
                    raise BundleError(f"embedding differs from the pipeline's for {e['text'][:60]!r} by more "
                                      f"than {atol}")
            return len(expected)
        got = self.predict([e["text"] for e in expected])
        for e, g in zip(expected, got):
            if e["label"] != g["label"] or abs(e["score"] - g["score"]) > atol:
                raise BundleError(f"prediction differs from the pipeline's for {e['text'][:60]!r}: expected "
                                  f"{e['label']} ({e['score']:.6f}), got {g['label']} ({g['score']:.6f})")
        return len(expected)


def verify(root: Path) -> dict:
    """Check every file listed in manifest.json against its sha256 and refuse files it does not
    list (an unlisted file could be swapped in unnoticed); returns the manifest."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST}: unreadable manifest ({exc})") from None
    files: dict[str, str] = manifest.get("files", {})
    for name in REQUIRED:
        if name not in files:
            raise BundleError(f"{root}: the manifest does not list {name}")
    for rel, digest in files.items():
        f = root / rel
        if f.is_symlink() or not f.is_file():
            raise BundleError(f"{f}: listed in the manifest but missing (or a symlink)")
        if _sha256(f) != digest:
            raise BundleError(f"{f}: does not match its sha256 in the manifest (tampered or corrupt)")
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.is_symlink() or (f.is_file() and rel not in (MANIFEST, SIGNATURE) and rel not in files):
            raise BundleError(f"{f}: not listed in the manifest; refusing a bundle with unlisted files or symlinks")
    return manifest


def key_id(raw_public_key: bytes) -> str:
    """Short id of an Ed25519 public key (first 16 hex digits of the sha256 of its 32 raw bytes)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def check_signature(manifest: bytes, signature: bytes, trusted_keys: list, source) -> str:
    """Verify manifest.sig (`signature`) over the exact manifest bytes with one of `trusted_keys`
    (PEM public keys: paths or bytes); returns the key id that signed, else raises BundleError."""
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        record = json.loads(signature)
        sig = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: unreadable {SIGNATURE} ({exc})") from None
    if record.get("algorithm") != "ed25519":
        raise BundleError(f"{source}: {SIGNATURE} uses {record.get('algorithm')!r}; only ed25519 is accepted")
    if not trusted_keys:
        raise BundleError(f"{source}: no trusted keys given to check {SIGNATURE} against")
    ids = []
    for key in trusted_keys:
        try:
            pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        except OSError as exc:
            raise BundleError(f"{key}: cannot read the trusted key ({exc.strerror})") from None
        try:
            public = serialization.load_pem_public_key(pem)
        except ValueError:
            raise BundleError(f"{key if not isinstance(key, bytes) else 'a trusted key'}: not a PEM public key "
                              "(pass the .pub file, not the private key)") from None
        if not isinstance(public, Ed25519PublicKey):
            raise BundleError(f"{key if not isinstance(key, bytes) else 'a trusted key'}: not an Ed25519 public key")
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ids.append(key_id(raw))
        try:
            public.verify(sig, manifest)
            return ids[-1]
        except InvalidSignature:
            continue
    raise BundleError(f"{source}: bad signature: manifest.json is not signed by a trusted key "
                      f"(signed by key {record.get('key_id')}, trusted: {', '.join(ids)}; or the manifest was edited)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------- ONNX external data check
# The locations of external tensors are read from the ModelProto with a minimal protobuf wire-format
# reader, so this check needs no `onnx` package. Field numbers from onnx.proto; each entry maps a
# field of a message to the message type it holds. Every place a TensorProto can live is walked:
# initializers, sparse initializers, node attributes (also inside subgraphs, functions and
# training-info graphs).
_MESSAGES = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # TensorProto.external_data: repeated StringStringEntryProto
}


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise BundleError("model.onnx is not a valid ONNX file (truncated varint)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value) of one message; value is an int or a (start, end) span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1 or wire == 5:
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise BundleError(f"model.onnx is not a valid ONNX file (wire type {wire})")
        if pos > end:
            raise BundleError("model.onnx is not a valid ONNX file (field runs past its message)")
        yield field, wire, value


def external_data_locations(model_path: Path) -> list[str]:
    """Every `location` named by an external-data tensor in the model, in file order."""
    buf = memoryview(Path(model_path).read_bytes())
    out, stack = [], [("model", 0, len(buf))]
    while stack:
        kind, start, end = stack.pop()
        for field, wire, value in _fields(buf, start, end):
            child = _MESSAGES[kind].get(field)
            if child is None or wire != 2:
                continue
            if child == "entry":  # StringStringEntryProto: key = 1, value = 2
                entry = {f: bytes(buf[v[0] : v[1]]) for f, w, v in _fields(buf, *value) if w == 2}
                if entry.get(1) == b"location":
                    out.append(entry.get(2, b"").decode("utf-8", errors="replace"))
            else:
                stack.append((child, *value))
    return out


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_external_data(model_path: Path) -> list[str]:
    """Refuse external-data locations that leave the model's directory: absolute paths, `..`, drive
    letters, backslashes, symlinks anywhere on the way, missing files. Returns the locations.
    (With a manifest, `verify` has already refused any file it does not list.)"""
    model_path = Path(model_path)
    root = model_path.parent
    locations = external_data_locations(model_path)
    for loc in locations:
        parts = PurePosixPath(loc).parts
        bad = (not loc or "\x00" in loc or "\\" in loc or loc.startswith("/") or _DRIVE.match(loc)
               or ".." in parts or os.path.isabs(loc))
        target = root / loc
        if not bad:
            node = root
            for part in parts:  # no symlink at any level, so the path cannot be redirected
                node = node / part
                if node.is_symlink():
                    bad = True
                    break
        if bad or not target.is_file() or not target.resolve().is_relative_to(root.resolve()):
            raise BundleError(f"{model_path}: external data location '{loc}' is not a regular file inside the "
                              "bundle (absolute, '..', symlink or missing)")
    return locations


def _extract(zip_path: Path) -> Path:
    """Extract a bundle into a fresh temp directory, refusing members that would land outside it
    (absolute, `..`, drive letters, backslashes), symlinks, special files and duplicate names."""
    with zipfile.ZipFile(zip_path) as zf:
        names = set()
        for info in zf.infolist():
            name = info.filename
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            unsafe = (name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in PurePosixPath(name).parts
                      or "\x00" in name)
            if unsafe or (kind and kind not in (stat.S_IFREG, stat.S_IFDIR)):
                what = "a symlink or special file" if not unsafe else "written outside the bundle"
                raise BundleError(f"{zip_path}: member '{name}' would be {what}")
            if name in names:
                raise BundleError(f"{zip_path}: member '{name}' appears twice")
            names.add(name)
        out = Path(tempfile.mkdtemp(prefix="lifecycle-bundle-"))
        try:
            zf.extractall(out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return out
