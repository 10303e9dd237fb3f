"""Table rows -> a table graph's feeds: one transform from raw rows, used by training (lifecycle.data.tables),
the edge runtime and the service, so the same row gives the same tensors everywhere. Its parameters (fitted
on the training split only) are plain JSON: preprocessing.json beside the graph. RowInputs is the inputs
kind "rows"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PREPROCESSING = "preprocessing.json"
MISSING_ID, UNKNOWN_ID = 0, 1  # category ids 0 and 1; a vocabulary's own values start at 2
_TRUE, _FALSE = {"true", "1", "yes", "t", "y"}, {"false", "0", "no", "f", "n"}


class RowError(ValueError):
    """A row the schema refuses: a required column absent, or a value of the wrong type. `column` names it."""

    def __init__(self, column: str, reason: str):
        super().__init__(f"column '{column}': {reason}")
        self.column, self.reason = column, reason


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)  # NaN (numpy floats are Python floats too)


def _boolean(column: str, v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    s = str(v).strip().lower() if isinstance(v, (str, int, np.integer)) else None
    if s in _TRUE or s in _FALSE:
        return "true" if s in _TRUE else "false"
    raise RowError(column, f"expected a boolean (true/false, 1/0, yes/no), got {v!r}")


class TablePreprocessing:
    """Raw table rows -> the feature tokenizer's inputs, with its fitted parameters:
    - numeric: (x - mean) / std, clipped to the training range (an out-of-range value is counted); a
      missing value is 0 in `numeric` and 1 in `numeric_missing`, from which the model takes a learned
      "missing" embedding instead of reading the 0 as a value;
    - categorical and boolean: id 0 missing, 1 unknown (not in the training vocabulary: counted), 2.. the
      vocabulary; booleans have the vocabulary ["false", "true"].
    A column the schema requires but a row lacks, or a value of the wrong type, raises RowError."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.numeric: list[dict] = spec["numeric"]  # {"name", "mean", "std", "min", "max"}
        self.categorical: list[dict] = spec["categorical"]  # {"name", "vocabulary", "boolean"}
        self.columns = [c["name"] for c in (*self.numeric, *self.categorical)]
        self._ids = [{v: i + 2 for i, v in enumerate(c["vocabulary"])} for c in self.categorical]

    @classmethod
    def load(cls, path: Path) -> TablePreprocessing:
        return cls(json.loads(Path(path).read_text()))

    def transform_rows(self, rows: list[dict]) -> tuple[dict[str, np.ndarray], dict]:
        """Rows (mappings column -> value) -> (feeds, counts). Extra keys are ignored and counted."""
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RowError("*", f"row {i} is not a mapping of column -> value")
            for name in self.columns:
                if name not in row:
                    raise RowError(name, f"missing from row {i} (a required column; send null for a missing value)")
        known = set(self.columns)
        extra: dict[str, int] = {}
        for row in rows:
            for k in row:
                if k not in known:
                    extra[k] = extra.get(k, 0) + 1
        feeds, counts = self.transform_columns({c: [r[c] for r in rows] for c in self.columns}, len(rows))
        counts["extra_columns"] = extra
        return feeds, counts

    def transform_columns(self, columns: dict[str, list], n: int) -> tuple[dict[str, np.ndarray], dict]:
        """Column-wise: columns[name] holds n values (None or NaN: missing)."""
        counts: dict[str, dict[str, int]] = {"missing": {}, "unknown_category": {}, "out_of_range": {}}
        num = np.zeros((n, len(self.numeric)), dtype=np.float32)
        missing = np.zeros((n, len(self.numeric)), dtype=np.float32)
        for j, c in enumerate(self.numeric):
            values = np.empty(n, dtype=np.float64)
            for i, v in enumerate(columns[c["name"]]):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating, type(None))):
                    raise RowError(c["name"], f"expected a number or null, got {v!r}")
                try:
                    values[i] = np.nan if v is None else float(v)
                except OverflowError:  # an integer of hundreds of digits: no float holds it
                    raise RowError(c["name"], f"number too large ({len(str(abs(v)))} digits)") from None
            gone = np.isnan(values)
            outside = ~gone & ((values < c["min"]) | (values > c["max"]))
            values = np.clip(values, c["min"], c["max"])
            num[:, j] = np.where(gone, 0.0, (values - c["mean"]) / c["std"])
            missing[:, j] = gone
            _count(counts["missing"], c["name"], int(gone.sum()))
            _count(counts["out_of_range"], c["name"], int(outside.sum()))
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (c, ids) in enumerate(zip(self.categorical, self._ids)):
            gone = unknown = 0
            for i, v in enumerate(columns[c["name"]]):
                if _is_missing(v):
                    cat[i, j], gone = MISSING_ID, gone + 1
                    continue
                if c.get("boolean"):
                    key = _boolean(c["name"], v)
                elif isinstance(v, (str, int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                    key = str(v)
                else:
                    raise RowError(c["name"], f"expected a category (text or integer) or null, got {v!r}")
                cat[i, j] = ids.get(key, UNKNOWN_ID)
                unknown += key not in ids
            _count(counts["missing"], c["name"], gone)
            _count(counts["unknown_category"], c["name"], unknown)
        return {"numeric": num, "numeric_missing": missing, "categorical": cat}, counts


def _count(into: dict, name: str, n: int) -> None:
    if n:
        into[name] = into.get(name, 0) + n


class RowInputs:
    """Inputs kind "rows": mappings column -> value through the model's preprocessing.json. Rows have no
    length (max_length 0) and any rows share a session call."""

    max_length = 0

    def __init__(self, root: Path, schema: dict):
        self.table = TablePreprocessing.load(Path(root) / PREPROCESSING)

    def sample(self) -> dict:
        return {c: None for c in self.table.columns}  # every value missing

    def recorded(self, entry: dict) -> dict:
        return entry["row"]

    def feeds(self, predictor, rows: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        # a graph may leave out an input it does not use (no categorical columns); pad_to does not apply
        return {k: v for k, v in self.table.transform_rows(list(rows))[0].items() if k in predictor.input_names}

    def outputs(self, predictor, rows: list, batch_size: int) -> np.ndarray:
        return self.counted_outputs(predictor, rows, batch_size)[0]

    def counted_outputs(self, predictor, rows: list, batch_size: int) -> tuple[np.ndarray, dict]:
        """(the graph's output per row, what preprocessing counted); see Predictor.table_outputs."""
        feeds, counts = self.table.transform_rows(list(rows))
        n = len(rows)
        size = 1 if predictor.batch_dependent else max(1, batch_size)
        outs = [predictor.session.run(None, {k: v[i : i + size] for k, v in feeds.items() if k in predictor.input_names})[0]
                for i in range(0, n, size)]
        if not outs:
            return np.zeros((0, max(1, len(predictor.labels))), dtype=np.float32), counts
        return np.concatenate(outs).astype(np.float32), counts
