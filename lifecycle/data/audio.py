r"""Audio: WAV/FLAC clips in a folder with one sub-directory per class ("audiofolder"), or every clip under a
folder with its label and other columns parsed from the file name by a declared pattern or read from a CSV
("audiofiles"). Decoded by lifecycle.edge.decode_audio (libsndfile), averaged to mono and resampled to the
model's rate by lifecycle.edge.resample: the functions the edge runtime and the service use, so a file gives
the same samples in training and in production. Exact duplicate waves are dropped before the split; the
preprocessing (a transformers ASTFeatureExtractor config) is fitted on the training split.

    data:
      fsdd:                                   # recordings/{digit}_{speaker}_{take}.wav, 8 kHz
        format: audiofiles
        path: speech/fsdd/recordings
        audio:
          pattern: '(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav'
          test_where: {take: [0, 1, 2, 3, 4]}  # FSDD's official test takes; {speaker: [george]}: a held-out speaker
      synth: {format: audiofolder, path: speech/synth/train, audio: {metadata: speech/synth/metadata.csv}}

A split is by column values (`test_where`, `validation_where`: every clip of a listed take or speaker, so a
group is never in two splits) and, where none is given, by `split` fractions of all clips (stratified by
label, fixed by the seed). An unreadable file is counted and named in the stats, not a crash; so are files
of another extension and files the pattern or the metadata does not describe. `label_field: null` reads
every clip unlabelled (for pre-training).
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from lifecycle import LifecycleError
from lifecycle.data.splits import check_scored_classes, split_off
from lifecycle.schema import Strict

if TYPE_CHECKING:
    import numpy as np

# `src` below is a lifecycle.data.sources.DataSource and `pipeline` a PipelineView, as in lifecycle.data.images.

AUDIO_FORMATS = ("audiofolder", "audiofiles")
EXTENSIONS = (".wav", ".flac")
SHOWN = 20  # files named in the stats per kind (all are counted)
CLIPPED = 0.999  # a file with a sample this loud (before resampling) counts as clipped


class AudioSpec(Strict):
    """How a source's clips are read and split (`audio:` of an audio source)."""

    # The model's rate: every clip is resampled to it (8 to 48 kHz, lifecycle.edge.SAMPLE_RATES).
    sampling_rate: int = Field(16000, ge=8000, le=48000)
    pattern: str | None = None  # a regex matched against each file NAME; its named groups are columns
    metadata: str | None = None  # a CSV whose `file` column is a clip's path relative to the CSV's folder
    test_where: dict[str, list[str | int]] | None = None  # clips whose column holds a listed value are test
    validation_where: dict[str, list[str | int]] | None = None  # likewise validation (test is taken first)
    test_only: bool = False  # every clip is test: an evaluation-only source (never trained or tuned on)
    max_seconds: float | None = Field(None, gt=0)  # longer clips keep their first max_seconds (counted)
    mel_bins: int = Field(64, ge=8, le=256)  # log-mel bands of the features (of 257 FFT bins up to half the rate)
    # Each clip's frames stretched to the task's max_length rather than padded or cut (lifecycle.edge.audio_inputs):
    # a word's sounds fall at the same places whatever its length, at the cost of the extractor's own padding.
    stretch_frames: bool = False
    # Other audio sources of the pipeline whose test clips the model is also scored on (lifecycle.workloads.audio),
    # e.g. real/ and the synthetic test sets: read through this source's preprocessing, never trained on.
    also_test: list[str] = []
    # Labels renamed as they are read, so that sources agree: FSDD's file names say 0-9, real/'s folders zero-nine.
    rename_labels: dict[str | int, str] = {}

    @field_validator("rename_labels")
    @classmethod
    def _keys_are_labels(cls, rename: dict) -> dict[str, str]:
        return {str(k): v for k, v in rename.items()}  # YAML reads `0: zero` with an int key

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from None
        return pattern

    @model_validator(mode="after")
    def _test_only(self) -> AudioSpec:
        if self.test_only and (self.test_where or self.validation_where):
            raise ValueError("test_only: every clip is test; drop `test_where` / `validation_where`")
        return self


@dataclass
class AudioSplit:
    waves: list[np.ndarray]  # float32 mono at the model's rate
    labels: list[str]
    names: list[str]  # each clip's file, relative to `path`
    columns: dict[str, list[str]]  # pattern groups and metadata columns, per clip
    sampling_rate: int  # of every wave: the source's `audio.sampling_rate`

    def __len__(self) -> int:
        return len(self.waves)


@dataclass
class AudioData:
    splits: dict[str, AudioSplit]
    labels: list[str]  # class names (id -> name); [] for an unlabelled source
    preprocessing: dict  # an ASTFeatureExtractor config (lifecycle.edge.AudioPreprocessing reads it)
    spec: AudioSpec
    stats: dict = field(default_factory=dict)
    _features: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def features(self, split: str):
        """The split's log-mel features (n, frames, mel bins) float32, through the one transform; computed once
        per split (a recipe reads test and validation several times; read_through and with_frames make a new
        AudioData, so a new preprocessing never meets old features). Callers share the array: never modify it."""
        if split not in self._features:
            from lifecycle.edge import AudioPreprocessing

            self._features[split] = AudioPreprocessing(self.preprocessing).transform(self.splits[split].waves)
        return self._features[split]

    def target(self, split: str):
        import numpy as np

        index = {name: i for i, name in enumerate(self.labels)}
        return np.array([index.get(v, -1) for v in self.splits[split].labels], dtype=np.int64)

    def read_through(self, preprocessing: dict, where) -> AudioData:
        """These clips read through another model's preprocessing (a pre-trained model's), which must take
        audio at the rate they were resampled to."""
        import dataclasses

        if preprocessing["sampling_rate"] != self.spec.sampling_rate:
            raise LifecycleError(f"{where}: the model reads audio at {preprocessing['sampling_rate']} Hz, these clips "
                                 f"are resampled to {self.spec.sampling_rate} Hz; set `audio.sampling_rate: "
                                 f"{preprocessing['sampling_rate']}`")
        return dataclasses.replace(self, preprocessing=preprocessing)


# ------------------------------------------------------------------------------------------- reading
def read_metadata(path: Path) -> tuple[list[str], dict[Path, dict]]:
    """A metadata CSV: its columns (but `file`) and each listed clip's row, by resolved path."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            names = list(reader.fieldnames or [])
            if "file" not in names:
                raise LifecycleError(f"{path}: audio.metadata needs a `file` column (each clip's path relative to "
                                     f"the CSV's folder); it has {', '.join(names) or 'no header'}")
            rows = {(path.parent / r["file"]).resolve(): {k: r[k] or "" for k in names if k != "file"} for r in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LifecycleError(f"{path}: audio.metadata could not be read ({exc}); give a UTF-8 CSV") from None
    return [n for n in names if n != "file"], rows


def read_clips(roots: list[Path], src, spec: AudioSpec, metadata: Path | None):
    """Every WAV/FLAC file under the roots, sorted by path, decoded, mono, cut to max_seconds and resampled;
    named relative to the root (to the roots' common folder when there are several).
    Returns (waves, labels, names, columns, stats)."""
    import os

    import numpy as np

    from lifecycle.edge import AudioError, decode_audio, open_audio, resample

    for root in roots:
        if not root.is_dir():
            raise LifecycleError(f"{root}: an {src.format} source's path is a directory of WAV/FLAC files")
    base = roots[0] if len(roots) == 1 else Path(os.path.commonpath([r.resolve() for r in roots]))
    pattern = re.compile(spec.pattern) if spec.pattern else None
    names_meta, rows = read_metadata(metadata) if metadata else ([], None)
    have = [*(pattern.groupindex if pattern else ()), *names_meta]
    folder, labelled = src.format == "audiofolder", src.label_field is not None
    if folder and labelled and "label" not in have:
        have.append("label")  # the class folder
    if labelled and src.label_field not in have and not folder:
        raise LifecycleError(f"{roots[0]}: label_field '{src.label_field}' is not a column of this source (have "
                             f"{', '.join(have) or 'none'}); name a group of `audio.pattern` or a column of "
                             "`audio.metadata`, or set `label_field: null`")
    for name, where in (("test_where", spec.test_where), ("validation_where", spec.validation_where)):
        for col in where or {}:
            if col not in have:
                raise LifecycleError(f"{roots[0]}: audio.{name}: no column '{col}' (have {', '.join(have) or 'none'}); "
                                     "columns are `audio.pattern`'s groups and `audio.metadata`'s columns")

    waves, labels, names, columns = [], [], [], {c: [] for c in have}
    unreadable, unmatched, clipped, other, cut = [], [], [], 0, 0
    rates, channels, seconds = Counter(), Counter(), []
    for root, f in ((r, f) for r in roots for f in sorted(p for p in r.rglob("*") if p.is_file())):
        rel = f.relative_to(root)  # its first part is the class folder
        shown = str(rel if len(roots) == 1 else f.resolve().relative_to(base))
        if f.suffix.lower() not in EXTENSIONS or (folder and labelled and len(rel.parts) < 2):
            other += 1  # another kind of file, or a clip beside the class folders (no class)
            continue
        found = {"label": rel.parts[0]} if folder and labelled else {}
        match = pattern.fullmatch(f.name) if pattern else None
        row = rows.get(f.resolve()) if rows is not None else {}
        if (pattern and not match) or row is None:
            unmatched.append(shown)
            continue
        found = {**found, **{k: v or "" for k, v in (match.groupdict() if match else {}).items()}, **row}
        try:
            raw = f.read_bytes()
            info = open_audio(raw, max_seconds=None, max_channels=None)
            wave, rate = decode_audio(raw, max_seconds=None, max_channels=None)
        except (AudioError, OSError) as exc:
            unreadable.append(f"{shown}: {exc}")
            continue
        rates[rate] += 1
        channels[info.channels] += 1
        seconds.append(len(wave) / rate)
        if len(wave) and float(np.abs(wave).max()) >= CLIPPED:
            clipped.append(shown)
        if spec.max_seconds and len(wave) > spec.max_seconds * rate:
            wave, cut = wave[: int(spec.max_seconds * rate)], cut + 1
        waves.append(resample(wave, rate, spec.sampling_rate))
        label = (rel.parts[0] if folder else found[src.label_field]) if labelled else ""
        labels.append(spec.rename_labels.get(label, label))
        names.append(shown)
        for c in have:
            columns[c].append(found[c])
    secs = np.array(seconds or [0.0])
    stats = {"unreadable": len(unreadable), "unreadable_files": unreadable[:SHOWN], "other_files": other,
             "unmatched": len(unmatched), "unmatched_files": unmatched[:SHOWN], "clipped": len(clipped),
             "clipped_files": clipped[:SHOWN], "cut_to_max_seconds": cut, "sample_rates": dict(sorted(rates.items())),
             "channels": dict(sorted(channels.items())), "seconds_total": round(float(secs.sum()), 2),
             "seconds_min": round(float(secs.min()), 3), "seconds_mean": round(float(secs.mean()), 3),
             "seconds_max": round(float(secs.max()), 3)}
    return waves, labels, names, columns, stats


def load_audio(src, pipeline, seed: int) -> AudioData:
    """Read, drop exact duplicates, split (by column values, else stratified fractions), fit preprocessing."""
    import numpy as np

    from lifecycle.edge import AudioPreprocessing

    spec = src.audio or AudioSpec()
    labelled = src.label_field is not None
    metadata = pipeline.resolve(spec.metadata) if spec.metadata else None
    roots = [f for f in src.files(pipeline) if metadata is None or f.resolve() != metadata.resolve()]
    where = ", ".join(map(str, roots))
    audio = sorted(name for name, other in pipeline.data.items() if other.reads == "audio")
    for name in spec.also_test:
        if name not in audio:
            raise LifecycleError(f"{where}: audio.also_test: '{name}' is not an audio source of this pipeline (have "
                                 f"{', '.join(audio)})")
    waves, labels, names, columns, stats = read_clips(roots, src, spec, metadata)
    if not waves:
        raise LifecycleError(f"{where}: no readable WAV/FLAC clip ({stats['unreadable']} unreadable, "
                             f"{stats['unmatched']} not matched by the pattern or metadata, {stats['other_files']} "
                             "other files)")

    keep, seen, conflicts = [], {}, 0
    for i, w in enumerate(waves):  # exact duplicates (same samples after resampling): the first stays
        key = hashlib.sha256(w.tobytes()).hexdigest()
        if key in seen:
            conflicts += labels[seen[key]] != labels[i]
            continue
        seen[key] = i
        keep.append(i)
    stats.update(clips=len(waves), duplicates_dropped=len(waves) - len(keep), duplicate_label_conflicts=conflicts)
    waves, labels, names = [waves[i] for i in keep], [labels[i] for i in keep], [names[i] for i in keep]
    columns = {c: [v[i] for i in keep] for c, v in columns.items()}

    splits = {}
    for name, idx in split_clips(labels, columns, spec, src.split, seed, labelled and src.split.stratify).items():
        if src.labels is not None:  # a subset of the words (after the split, so no test clip moves into training)
            idx = idx[np.isin(np.array(labels, dtype=object)[idx], src.labels)]
        if src.limit:  # a seeded subset: the first clips by path could all be one class folder
            idx = np.sort(np.random.default_rng(seed).permutation(idx)[: src.limit])
        if not len(idx) and not spec.test_only and (labelled or name != "test"):  # a corpus may hold no test clip
            raise LifecycleError(f"{where}: the {name} split is empty; change `audio.{name}_where`, the split "
                                 "fractions or add clips")
        splits[name] = AudioSplit([waves[i] for i in idx], [labels[i] for i in idx], [names[i] for i in idx],
                                  {c: [v[i] for i in idx] for c, v in columns.items()}, spec.sampling_rate)
    fitted = "test" if spec.test_only else "train"  # a test-only source is read through a model's preprocessing
    classes = sorted(set(splits[fitted].labels)) if labelled else []
    if labelled and not spec.test_only:
        if len(classes) < 2:
            raise LifecycleError(f"{where}: the train split has one class; a classifier needs two")
        check_scored_classes(where, {name: part.labels for name, part in splits.items()})
    stats.update({f"{k}_clips": len(v) for k, v in splits.items()})
    preprocessing = AudioPreprocessing.fit(splits[fitted].waves, spec.sampling_rate, spec.mel_bins)
    if spec.stretch_frames:
        preprocessing["stretch_frames"] = True
    return AudioData(splits, classes, preprocessing, spec, stats)


def split_clips(labels: list[str], columns: dict[str, list[str]], spec: AudioSpec, split, seed: int,
                stratify: bool) -> dict[str, np.ndarray]:
    """Clip indices per split: the `where`s first (test, then validation among the rest), then `split`
    fractions of all clips for a split no `where` names."""
    import numpy as np

    order = np.arange(len(labels))
    if spec.test_only:
        return {"train": order[:0], "validation": order[:0], "test": order}

    def listed(where: dict) -> np.ndarray:  # every column of the where holds one of its values
        allowed = {c: {str(v) for v in values} for c, values in where.items()}
        return np.array([all(columns[c][i] in vs for c, vs in allowed.items()) for i in order], dtype=bool)

    strat = np.array(labels) if stratify else None
    test = order[listed(spec.test_where)] if spec.test_where else None
    rest = order if test is None else order[~np.isin(order, test)]
    val = rest[listed(spec.validation_where)[rest]] if spec.validation_where else None
    rest = rest if val is None else rest[~np.isin(rest, val)]
    if test is None:
        rest, test = split_off(rest, min(0.9, split.test * len(order) / max(1, len(rest))), seed,
                            None if strat is None else strat[rest])
    if val is None:
        rest, val = split_off(rest, min(0.9, split.validation * len(order) / max(1, len(rest))), seed,
                           None if strat is None else strat[rest])
    return {"train": rest, "validation": val, "test": test}
