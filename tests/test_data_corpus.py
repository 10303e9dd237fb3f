"""Corpus loading: cleaning, exact and near-duplicate removal, deterministic splits, Brown tags, mixes,
tokenization + packing and fixed evaluation masks."""

import json
import random
import zipfile
from pathlib import Path

import pytest

from lifecycle import LifecycleError
from lifecycle.config import build
from lifecycle.data import load as load_data
from lifecycle.data.corpus import load_corpus, mask_for_eval, tokenize_and_pack

TESTS = Path(__file__).parent
SHARED = Path(__file__).parents[1] / "../shared/data"
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def doc(i: int, n: int = 40) -> str:
    """A made-up document; different i give unrelated word sequences."""
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(9)) for _ in range(n))


def pipeline(tmp_path, data: dict):
    raw = {"name": "t", "data": data, "stages": [{"kind": "pretrain", "data": next(iter(data))}]}
    return build(raw, base_dir=tmp_path)


def write_jsonl(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_cleaning_and_dedup_counts(tmp_path):
    base = [doc(i, 100) for i in range(30)]
    near = base[3].split()
    near[50] = "CHANGED"  # one word in 100 differs: Jaccard of the 5-gram shingle sets 91/101
    texts = base + ["  " + base[0].upper() + "\n\n", " ".join(near), "tiny", "", base[1]]
    write_jsonl(tmp_path / "c.jsonl", texts)
    p = pipeline(tmp_path, {"c": {"format": "jsonl", "path": "c.jsonl", "label_field": None, "min_chars": 10}})
    corpus = load_corpus(p.data["c"], p, seed=0)
    assert corpus.stats == {"documents_read": 35, "dropped_short": 2, "dropped_duplicate": 2,
                            "dropped_near_duplicate": 1, "train_documents": 27, "validation_documents": 3}
    assert set(corpus.splits["train"]["text"]) | set(corpus.splits["validation"]["text"]) == set(base)
    assert isinstance(load_data(p.data["c"], p), type(corpus))  # unlabelled -> Corpus via the data layer


def test_near_dedup_can_be_switched_off(tmp_path):
    near = doc(3).split()
    near[5] = "CHANGED"
    write_jsonl(tmp_path / "c.jsonl", [doc(i) for i in range(10)] + [" ".join(near)])
    p = pipeline(tmp_path, {"c": {"format": "jsonl", "path": "c.jsonl", "label_field": None,
                                  "dedup": {"near": False}}})
    assert load_corpus(p.data["c"], p, 0).stats["dropped_near_duplicate"] == 0


def test_split_is_deterministic_by_seed_and_not_by_order(tmp_path):
    texts = [doc(i) for i in range(50)]
    write_jsonl(tmp_path / "a.jsonl", texts)
    write_jsonl(tmp_path / "b.jsonl", texts[::-1])
    p = pipeline(tmp_path, {n: {"format": "jsonl", "path": f"{n}.jsonl", "label_field": None} for n in "ab"})
    val = lambda name, seed: set(load_corpus(p.data[name], p, seed).splits["validation"]["text"])  # noqa: E731
    assert val("a", 0) == val("a", 0) == val("b", 0)  # file order does not matter
    assert val("a", 0) != val("a", 1)
    assert len(val("a", 0)) == 5


def test_explicit_split_files_are_kept_and_deduplicated_across(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [doc(i) for i in range(10)])
    write_jsonl(tmp_path / "val.jsonl", [doc(100), doc(101), doc(3)])  # doc(3) is also a training text
    p = pipeline(tmp_path, {"c": {"format": "jsonl", "train": "train.jsonl", "validation": "val.jsonl",
                                  "label_field": None}})
    corpus = load_corpus(p.data["c"], p, 0)
    assert list(corpus.splits["validation"]["text"]) == [doc(100), doc(101)]
    assert len(corpus.splits["train"]) == 10 and corpus.stats["dropped_duplicate"] == 1


def test_brown_style_zip_with_pos_tags(tmp_path):
    with zipfile.ZipFile(tmp_path / "brown.zip", "w") as zf:
        zf.writestr("brown/README", "not a document")
        zf.writestr("brown/ca01", "\n\n\tThe/at jury/nn said/vbd ./.\n\n\tIt/pps was/bedz late/jj ./.\n")
        for i in range(2, 12):
            zf.writestr(f"brown/ca{i:02d}", " ".join(f"{w}/nn" for w in doc(i).split()))
    p = pipeline(tmp_path, {"brown": {"format": "zip", "path": "brown.zip", "members": "brown/c[a-r][0-9][0-9]",
                                      "pos_tagged": True, "encoding": "latin-1", "label_field": None}})
    corpus = load_corpus(p.data["brown"], p, 0)
    texts = list(corpus.splits["train"]["text"]) + list(corpus.splits["validation"]["text"])
    assert corpus.stats["documents_read"] == 11
    assert "The jury said . It was late ." in texts
    assert not any("/nn" in t for t in texts)


def test_mix_reads_several_formats_and_dedups_across_them(tmp_path):
    (tmp_path / "a.csv").write_text("label,abstract\n" + "".join(f'1,"{doc(i)}"\n' for i in range(8)))
    (tmp_path / "q.json").write_text(json.dumps({str(i): {"CONTEXTS": [doc(i, 20), doc(i + 100, 20)],
                                                          "final_decision": "yes"} for i in range(6)}))
    write_jsonl(tmp_path / "dup.jsonl", [doc(0)])
    data = {"bio": {"format": "mix", "sources": ["abstracts", "qa", "dup"], "split": {"validation": 0.25}},
            "abstracts": {"format": "csv", "path": "a.csv", "text_field": "abstract", "label_field": "label"},
            "qa": {"format": "pubmedqa", "path": "q.json", "label_field": None},
            "dup": {"format": "jsonl", "path": "dup.jsonl", "label_field": None}}
    p = pipeline(tmp_path, data)
    corpus = load_corpus(p.data["bio"], p, 0)
    assert corpus.stats["documents_read"] == 15 and corpus.stats["dropped_duplicate"] == 1
    assert corpus.stats["train_documents"] + corpus.stats["validation_documents"] == 14
    assert p.data["bio"].fingerprint(p) != p.data["qa"].fingerprint(p)


def test_mix_errors_name_the_fix(tmp_path):
    with pytest.raises(Exception, match="sources"):
        pipeline(tmp_path, {"m": {"format": "mix", "sources": [], "label_field": None}})
    with pytest.raises(LifecycleError, match=r"data\.m\.sources\[0\]: no data source named 'nope'"):
        pipeline(tmp_path, {"m": {"format": "mix", "sources": ["nope"]}})  # refused at load, not mid-run


def test_labelled_path_still_works():
    from lifecycle.config import load

    p = load(TESTS / "pipelines" / "tiny.yaml")
    data = load_data(p.data["news"], p)
    assert set(data.splits) == {"train", "validation", "test"} and data.num_labels == 5


def test_tokenize_pack_and_fixed_masks(tmp_path):
    from lifecycle.models import TokenizerSpec, train_tokenizer

    write_jsonl(tmp_path / "c.jsonl", [doc(i, 30) for i in range(40)])
    p = pipeline(tmp_path, {"c": {"format": "jsonl", "path": "c.jsonl", "label_field": None}})
    corpus = load_corpus(p.data["c"], p, 0)
    for family, objective in (("bert", "mlm"), ("gpt2", "clm")):
        tok = train_tokenizer(corpus.splits["train"]["text"], TokenizerSpec(vocab_size=200, min_frequency=1), family, 16)
        packed = tokenize_and_pack(corpus.splits, tok, 16, objective, tmp_path / "cache", num_proc=None)
        assert all(len(ids) == 16 for ids in packed["train"]["input_ids"])
        if objective == "clm":
            assert list(packed["train"]["labels"]) == list(packed["train"]["input_ids"])
            assert any(tok.eos_token_id in ids for ids in packed["train"]["input_ids"])
        else:
            assert packed["train"][0]["input_ids"][0] == tok.cls_token_id
            a = mask_for_eval(packed["validation"], tok, 0.15, seed=0)
            b = mask_for_eval(packed["validation"], tok, 0.15, seed=0)
            assert list(a["labels"]) == list(b["labels"]) and list(a["input_ids"]) == list(b["input_ids"])
            targets = [(i, t) for ids, labels in zip(a["input_ids"], a["labels"]) for i, t in zip(ids, labels) if t != -100]
            assert 0 < len(targets) < 0.4 * 16 * len(a)
            assert all(i == tok.mask_token_id for i, _ in targets)  # evaluation shows every target as [MASK]
    # a second call reads the content-addressed cache files back
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 8


@pytest.mark.data
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent (real-data checks run where it is)")
def test_real_biomedical_mix_counts(tmp_path):
    data = {"bio": {"format": "mix", "sources": ["medical", "pubmedqa"]},
            "medical": {"format": "csv", "path": str(SHARED / "medical_abstracts/medical_tc_test.csv"),
                        "text_field": "medical_abstract", "label_field": None},
            "pubmedqa": {"format": "pubmedqa", "path": str(SHARED / "pubmedqa/ori_pqal.json"), "label_field": None}}
    p = pipeline(tmp_path, data)
    stats = load_corpus(p.data["bio"], p, 0).stats
    assert stats["documents_read"] == 3888 and stats["dropped_duplicate"] > 0
    assert stats["train_documents"] + stats["validation_documents"] == 3888 - stats["dropped_duplicate"] \
        - stats["dropped_near_duplicate"] - stats["dropped_short"]
