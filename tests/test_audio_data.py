"""Audio sources (lifecycle.data.audio) through the real config loading path: clips generated here (tones,
noise, chirps at 8, 16 and 44.1 kHz, stereo, 24-bit, FLAC), an audiofiles source whose columns come from the
file names, an audiofolder with a metadata CSV, splits by column values (no speaker in two splits) or by
fractions, a test-only source, the stats (unreadable file named, clipped file counted, duplicate dropped) and
the errors that name the field to fix. The slow test reads the real FSDD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

import lifecycle.edge
from lifecycle import ConfigError, LifecycleError, config, data

FSDD = Path("/work/shared/data/speech/fsdd/recordings")
PATTERN = r"(?P<label>[a-z]+)_(?P<speaker>s\d)_(?P<take>\d+)\.(wav|flac)"


def clip(seed: int, rate: int, seconds: float = 0.25, kind: str = "tone") -> np.ndarray:
    """A distinct clip per seed: a tone, a chirp or noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.uniform(-0.3, 0.3, len(t)).astype(np.float32)
    freq = 200 + 37 * seed + (2000 * t if kind == "chirp" else 0)
    return (0.4 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.01, len(t))).astype(np.float32)


def write(path: Path, wave: np.ndarray, rate: int, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate, subtype=subtype)


def files_folder(root: Path) -> Path:
    """{label}_{speaker}_{take}.wav: 2 labels x 4 speakers x 5 takes, at 8 kHz, 16 kHz, one FLAC, one stereo
    44.1 kHz 24-bit WAV."""
    for i, (label, speaker, take) in enumerate((lb, f"s{s}", t) for lb in ("high", "low") for s in range(4)
                                               for t in range(5)):
        rate, kind = (8000, "chirp") if label == "high" else (16000, "tone")
        wave = clip(i, rate, kind=kind)
        if i == 3:
            write(root / f"{label}_{speaker}_{take}.flac", wave, rate)
        elif i == 4:
            write(root / f"{label}_{speaker}_{take}.wav", np.stack([wave, clip(99, rate)], axis=1), rate, "PCM_24")
        else:
            write(root / f"{label}_{speaker}_{take}.wav", wave, rate)
    return root


def pipeline(tmp_path: Path, **sources):
    """A pipeline holding these sources, through config.load (a pipeline YAML beside them)."""
    (tmp_path / "t.csv").write_text("text,label\nx,a\n")
    raw = {"name": "audio", "data": {**sources, "txt": {"format": "csv", "path": "t.csv"}},
           "stages": [{"kind": "pretrain", "data": "txt", "model": {"preset": "bert-tiny"}}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    return config.load(tmp_path / "p.yaml")


def load(tmp_path: Path, **sources):
    """The pipeline's sources as AudioData."""
    p = pipeline(tmp_path, **sources)
    return {name: data.load(p.data[name], p) for name in sources}


def speakers(d) -> dict[str, set]:
    return {name: set(split.columns["speaker"]) for name, split in d.splits.items()}


# ------------------------------------------------------------------------------------------ audiofiles
def test_file_name_columns_split_by_speaker_keep_every_speaker_in_one_split(tmp_path):
    files_folder(tmp_path / "clips")
    src = {"format": "audiofiles", "path": "clips",
           "audio": {"pattern": PATTERN, "test_where": {"speaker": ["s0"]}, "validation_where": {"speaker": ["s1"]}}}
    d = load(tmp_path, clips=src)["clips"]
    assert speakers(d) == {"train": {"s2", "s3"}, "validation": {"s1"}, "test": {"s0"}}
    assert d.labels == ["high", "low"] and {len(s) for s in d.splits.values()} == {10, 20}
    train = d.splits["train"]
    assert set(train.columns) == {"label", "speaker", "take"} and train.names == sorted(train.names)
    assert all(w.dtype == np.float32 and w.ndim == 1 and len(w) == 4000 for w in train.waves)  # 0.25 s at 16 kHz
    assert d.stats["sample_rates"] == {8000: 20, 16000: 20} and d.stats["channels"] == {1: 39, 2: 1}
    assert d.stats["seconds_total"] == 10.0 and d.stats["clips"] == 40 and d.stats["duplicates_dropped"] == 0
    np.testing.assert_array_equal(d.target("test"), [d.labels.index(v) for v in d.splits["test"].labels])
    features = d.features("train")  # the log-mel transform the edge runs, fitted on the training clips
    assert features.dtype == np.float32 and features.shape == (20, d.preprocessing["max_length"], 64)
    np.testing.assert_array_equal(features, lifecycle.edge.AudioPreprocessing(d.preprocessing).transform(train.waves))
    assert d.preprocessing["sampling_rate"] == 16000 and d.preprocessing["feature_extractor_type"] == "ASTFeatureExtractor"
    assert {s.sampling_rate for s in d.splits.values()} == {16000}
    # the 8 kHz chirp reaches training resampled by the edge's own function
    i = train.names.index("high_s2_0.wav")
    wave, rate = lifecycle.edge.decode_audio((tmp_path / "clips" / "high_s2_0.wav").read_bytes())
    np.testing.assert_array_equal(train.waves[i], lifecycle.edge.resample(wave, rate, 16000))


def test_a_take_split_with_the_rest_split_by_stratified_fractions_fixed_by_the_seed(tmp_path):
    files_folder(tmp_path / "clips")
    src = {"format": "audiofiles", "path": "clips", "split": {"validation": 0.25},
           "audio": {"pattern": PATTERN, "test_where": {"take": [0]}, "sampling_rate": 8000}}
    d, again = (load(tmp_path, clips=src)["clips"] for _ in range(2))
    assert set(d.splits["test"].columns["take"]) == {"0"} and len(d.splits["test"]) == 8
    assert len(d.splits["validation"]) == 10  # a quarter of all 40 clips, taken from the 32 left
    assert sorted(d.splits["validation"].labels) == ["high"] * 5 + ["low"] * 5  # stratified by label
    assert d.splits["validation"].names == again.splits["validation"].names
    assert all(len(w) == 2000 for w in d.splits["train"].waves)  # resampled to the 8 kHz asked for


def test_fractions_alone_split_stratified_and_a_limit_caps_every_split(tmp_path):
    files_folder(tmp_path / "clips")
    src = {"format": "audiofiles", "path": "clips", "split": {"validation": 0.2, "test": 0.2},
           "audio": {"pattern": PATTERN}}
    d = load(tmp_path, clips=src)["clips"]
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 24, "validation": 8, "test": 8}
    assert all(sorted(set(s.labels)) == ["high", "low"] for s in d.splits.values())
    limited = load(tmp_path, clips={**src, "limit": 6})["clips"]
    assert {len(v) for v in limited.splits.values()} == {6}
    assert set(limited.splits["train"].names) < set(d.splits["train"].names)


# ------------------------------------------------------------------------------------------ audiofolder
def test_an_audiofolder_with_metadata_reports_unreadable_clipped_and_duplicate_files(tmp_path):
    root = tmp_path / "synth"
    rows = ["file,voice"]
    for i, (label, voice) in enumerate((lb, v) for lb in ("yes", "no") for v in ("v1", "v2", "v3") for _ in range(3)):
        name = f"train/{label}/{label}_{voice}_{i}.wav"
        write(root / name, clip(i, 16000, kind="noise" if label == "no" else "tone"), 16000)
        rows.append(f"{name},{voice}")
    loud = clip(50, 16000) * 3  # clipped at full scale when written as 16-bit
    write(root / "train/yes/loud.wav", loud, 16000)
    (root / "train/no/copy.wav").write_bytes((root / "train/no/no_v1_9.wav").read_bytes())
    (root / "train/no/broken.wav").write_bytes(b"RIFF not really a wav file")
    (root / "train/no/readme.txt").write_text("notes")
    write(root / "train/no/unlisted.wav", clip(60, 16000), 16000)  # no metadata row
    rows += ["train/yes/loud.wav,v1", "train/no/copy.wav,v2", "train/no/broken.wav,v1"]
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")

    src = {"format": "audiofolder", "path": "synth/train",
           "audio": {"metadata": "synth/metadata.csv", "test_where": {"voice": ["v3"]},
                     "validation_where": {"voice": ["v2"]}}}
    d = load(tmp_path, synth=src)["synth"]
    s = d.stats
    assert s["unreadable"] == 1 and s["unreadable_files"][0].startswith("no/broken.wav: not a WAV or FLAC file")
    assert s["clipped"] == 1 and s["clipped_files"] == ["yes/loud.wav"]
    assert s["duplicates_dropped"] == 1 and s["other_files"] == 1
    assert s["unmatched"] == 1 and s["unmatched_files"] == ["no/unlisted.wav"]
    assert {name: set(split.columns["voice"]) for name, split in d.splits.items()} == \
        {"train": {"v1"}, "validation": {"v2"}, "test": {"v3"}}
    assert d.labels == ["no", "yes"] and d.splits["train"].labels.count("yes") == 4  # 3 takes + loud.wav
    assert d.splits["test"].columns["label"] == d.splits["test"].labels  # the class folder is a column too
    assert s["train_clips"] + s["validation_clips"] + s["test_clips"] == s["clips"] - 1


def test_a_test_only_source_and_an_unlabelled_one(tmp_path):
    files_folder(tmp_path / "clips")
    sources = {"real": {"format": "audiofiles", "path": "clips", "audio": {"pattern": PATTERN, "test_only": True}},
               "corpus": {"format": "audiofiles", "path": "clips", "label_field": None,
                          "audio": {"max_seconds": 0.1, "also_test": ["real"]}}}
    loaded = load(tmp_path, **sources)
    real, corpus = loaded["real"], loaded["corpus"]
    assert (len(real.splits["train"]), len(real.splits["validation"]), len(real.splits["test"])) == (0, 0, 40)
    assert real.labels == ["high", "low"] and real.preprocessing["sampling_rate"] == 16000
    assert corpus.labels == [] and set(corpus.splits["train"].labels) == {""} and len(corpus.splits["train"]) == 32
    assert corpus.features("validation").shape[0] == 4  # fitted without labels
    assert "stretch_frames" not in corpus.preprocessing  # the extractor's own padding unless a source asks
    sources["corpus"]["audio"]["stretch_frames"] = True
    assert load(tmp_path, **sources)["corpus"].preprocessing["stretch_frames"] is True
    assert corpus.stats["cut_to_max_seconds"] == 40 and {len(w) for w in corpus.splits["train"].waves} == {1600}
    assert corpus.stats["seconds_max"] == 0.25  # the files' own length


def test_several_folders_read_as_one_source_and_labels_renamed_to_agree(tmp_path):
    for part, rate in (("synth", 16000), ("human", 8000)):
        for i in range(6):
            write(tmp_path / part / "train" / ("zero" if i % 2 else "one") / f"{part}{i}.wav", clip(i + rate, rate), rate)
    corpus = {"format": "audiofolder", "path": ["synth/train", "human/train"], "label_field": None,
              "split": {"validation": 0.25, "test": 0.0}}
    files_folder(tmp_path / "clips")
    named = {"format": "audiofiles", "path": "clips", "split": {"validation": 0.25, "test": 0.25},
             "audio": {"pattern": r"(?P<label>[a-z]+)_.*", "rename_labels": {"high": "one", "low": "zero"}}}
    loaded = load(tmp_path, corpus=corpus, named=named)
    d = loaded["corpus"]
    assert len(d.splits["test"]) == 0 and len(d.splits["train"]) + len(d.splits["validation"]) == 12
    names = d.splits["train"].names + d.splits["validation"].names
    assert {n.split("/")[0] for n in names} == {"synth", "human"} and "human/train/one/human0.wav" in names
    assert d.stats["sample_rates"] == {8000: 6, 16000: 6}
    assert loaded["named"].labels == ["one", "zero"]


def test_read_through_refuses_a_model_of_another_rate(tmp_path):
    files_folder(tmp_path / "clips")
    d = load(tmp_path, clips={"format": "audiofiles", "path": "clips", "audio": {"pattern": PATTERN}})["clips"]
    assert d.read_through({**d.preprocessing}, "stages[1]").preprocessing == d.preprocessing
    with pytest.raises(LifecycleError, match=r"stages\[1\]: the model reads audio at 8000 Hz, these clips are "
                                             r"resampled to 16000 Hz; set `audio.sampling_rate: 8000`"):
        d.read_through({**d.preprocessing, "sampling_rate": 8000}, "stages[1]")


def test_the_fingerprint_covers_the_metadata_csv(tmp_path):
    write(tmp_path / "part/train/yes/a.wav", clip(1, 16000), 16000)
    (tmp_path / "part/metadata.csv").write_text("file,voice\ntrain/yes/a.wav,v1\n")
    p = pipeline(tmp_path, part={"format": "audiofolder", "path": "part/train", "audio": {"metadata": "part/metadata.csv"}})
    before = p.data["part"].fingerprint(p)
    assert tmp_path / "part/metadata.csv" in p.data["part"].files(p)
    (tmp_path / "part/metadata.csv").write_text("file,voice\ntrain/yes/a.wav,v2\n")
    assert p.data["part"].fingerprint(p) != before


# ------------------------------------------------------------------------------------------ errors
def test_an_audio_source_given_to_an_image_task_is_named_as_audio(tmp_path):
    files_folder(tmp_path / "clips")
    raw = {"name": "a", "data": {"clips": {"format": "audiofolder", "path": str(tmp_path / "clips")}},
           "task": {"type": "image-classification", "data": "clips"},
           "stages": [{"kind": "finetune", "model": {"preset": "bert-tiny"}}]}
    with pytest.raises(ConfigError, match="task.data: 'clips' is audio, but a image-classification task reads image"):
        config.build(raw)


CONFIG_ERRORS = [
    ({"format": "csv", "path": "t.csv", "audio": {}}, "audio: a 'csv' source holds no audio"),
    ({"format": "audiofiles", "path": "clips"}, "audio.pattern: an 'audiofiles' source takes its labels"),
    ({"format": "audiofiles", "path": "clips", "audio": {"pattern": "(?P<label>"}}, "not a regular expression"),
    ({"format": "audiofolder", "path": "clips", "audio": {"test_only": True, "test_where": {"take": [0]}}},
     "test_only: every clip is test"),
    ({"format": "audiofolder", "train": "clips"}, "train: an audio source is one folder"),
    ({"format": "audiofolder", "path": "clips", "audio": {"sampling_rate": 96000}}, "sampling_rate"),
]


@pytest.mark.parametrize(("source", "says"), CONFIG_ERRORS, ids=[c[1][:30] for c in CONFIG_ERRORS])
def test_a_bad_audio_field_is_a_config_error_naming_it(tmp_path, source, says):
    files_folder(tmp_path / "clips")
    with pytest.raises(ConfigError, match=r"data\.bad") as refused:
        load(tmp_path, bad=source)
    assert says in str(refused.value)


LOAD_ERRORS = [
    ({"pattern": PATTERN, "test_where": {"voice": ["v1"]}},
     "audio.test_where: no column 'voice' (have label, speaker, take)"),
    ({"pattern": r"(?P<digit>[a-z]+)_.*"}, "label_field 'label' is not a column of this source (have digit)"),
    ({"metadata": "meta.csv"}, "audio.metadata needs a `file` column"),
    ({"pattern": PATTERN, "also_test": ["txt"]}, "audio.also_test: 'txt' is not an audio source of this pipeline "
     "(have clips)"),
]


@pytest.mark.parametrize(("audio", "says"), LOAD_ERRORS, ids=[c[1][:30] for c in LOAD_ERRORS])
def test_a_column_the_source_does_not_have_is_named_with_the_ones_it_has(tmp_path, audio, says):
    files_folder(tmp_path / "clips")
    (tmp_path / "meta.csv").write_text("path,speaker\nhigh_s0_0.wav,s0\n")
    with pytest.raises(LifecycleError) as refused:
        load(tmp_path, clips={"format": "audiofiles", "path": "clips", "audio": audio})
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_a_source_of_no_readable_clip_says_what_it_found(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "notes.txt").write_text("no audio here")
    with pytest.raises(LifecycleError, match=r"no readable WAV/FLAC clip \(0 unreadable, 0 not matched .* 1 other"):
        load(tmp_path, clips={"format": "audiofiles", "path": "clips", "label_field": None})


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.slow
@pytest.mark.skipif(not FSDD.is_dir(), reason="the shared FSDD recordings are not on this machine")
def test_fsdd_reads_with_its_official_take_split(tmp_path):
    src = {"format": "audiofiles", "path": str(FSDD),
           "audio": {"pattern": r"(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)\.wav",
                     "test_where": {"take": list(range(5))}}}
    d = load(tmp_path, fsdd=src)["fsdd"]
    assert len(d.splits["train"]) + len(d.splits["validation"]) == 2700 and len(d.splits["test"]) == 300
    assert d.labels == [str(i) for i in range(10)] and len(set(d.splits["train"].columns["speaker"])) == 6
    assert d.stats["sample_rates"] == {8000: 3000} and d.stats["unreadable"] == 0
    assert set(d.splits["test"].columns["take"]) == {"0", "1", "2", "3", "4"}
