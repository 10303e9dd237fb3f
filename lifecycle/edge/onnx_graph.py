"""An ONNX file read without the `onnx` package: a minimal protobuf wire-format walker over the ModelProto,
which finds the external-data locations (refused when they leave the model's directory) and the op types."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .bundle import DRIVE, BundleError

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


def _walk(buf: memoryview):
    """(message kind, field, wire type, value) for every field of every message reachable from the
    ModelProto through _MESSAGES; "entry" messages are yielded, not entered."""
    stack = [("model", 0, len(buf))]
    while stack:
        kind, start, end = stack.pop()
        for field, wire, value in _fields(buf, start, end):
            yield kind, field, wire, value
            child = _MESSAGES[kind].get(field)
            if child is not None and child != "entry" and wire == 2:
                stack.append((child, *value))


def external_data_locations(model_path: Path) -> list[str]:
    """Every `location` named by an external-data tensor in the model, in file order."""
    buf = memoryview(Path(model_path).read_bytes())
    out = []
    for kind, field, wire, value in _walk(buf):
        if kind == "tensor" and field == 13 and wire == 2:  # StringStringEntryProto: key = 1, value = 2
            entry = {f: bytes(buf[v[0] : v[1]]) for f, w, v in _fields(buf, *value) if w == 2}
            if entry.get(1) == b"location":
                out.append(entry.get(2, b"").decode("utf-8", errors="replace"))
    return out


def op_types(model_path: Path) -> set[str]:
    """The op_type of every node in the model: main graph, subgraphs and functions (NodeProto field 4)."""
    buf = memoryview(Path(model_path).read_bytes())
    return {bytes(buf[v[0] : v[1]]).decode("utf-8", errors="replace")
            for kind, field, wire, v in _walk(buf) if kind == "node" and field == 4 and wire == 2}


def check_external_data(model_path: Path) -> list[str]:
    """Refuse external-data locations that leave the model's directory: absolute paths, `..`, drive
    letters, backslashes, symlinks anywhere on the way, missing files. Returns the locations.
    (With a manifest, `verify` has already refused any file it does not list.)"""
    model_path = Path(model_path)
    root = model_path.parent
    locations = external_data_locations(model_path)
    for loc in locations:
        parts = PurePosixPath(loc).parts
        bad = (not loc or "\x00" in loc or "\\" in loc or loc.startswith("/") or DRIVE.match(loc)
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
