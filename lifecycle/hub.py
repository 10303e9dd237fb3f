"""Models and data sets named by Hugging Face Hub id, pinned to a commit and safe offline.

A Hub repo is resolved through `huggingface_hub`'s cache (`HF_HUB_CACHE`, by default
~/.cache/huggingface/hub): online, `snapshot_download` fetches the revision (a branch, a tag or a commit)
and records which commit the name pointed at; offline (`HF_HUB_OFFLINE=1`, or `HF_DATASETS_OFFLINE=1`
for data sets) the revision is read from the cache's refs and nothing is fetched. What a stage depends on
is the resolved commit: it goes into the stage's cache key and manifest, so a tag moved to another
commit re-runs the stage, and the same commit never does.

Only loading a pipeline (`validate`, `run`, `plan`: lifecycle.config.check_files) and loading the weights
or rows fetch. Cache keys and fingerprints read the cache alone (`fetch=False`), so `lifecycle gate`
judges a run against the commits the cache holds, without network calls or downloads.

Data sets are read from the resolved snapshot folder by `datasets` (its README's configs, its data
files' split names, its Arrow cache), not by `load_dataset(repo_id)`: offline, the installed `datasets`
(5.x) ignores `revision` and takes whichever copy of the data set it prepared last, so a pin would not hold.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lifecycle import LifecycleError

# A repo id as the Hub spells it: `name` (the old canonical models, e.g. bert-base-uncased) or `org/name`.
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
# What a model snapshot needs: config, safetensors weights, tokenizer or preprocessor files (a
# sentence-transformers repo's 1_Pooling/config.json too). Pickle weights (*.bin, *.pt) are never fetched.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Resolved:
    """A Hub repo at a revision, as found: the commit the revision named and its snapshot folder."""

    repo_id: str
    revision: str
    commit: str
    path: Path

    def record(self) -> dict[str, str]:
        """What a manifest records of it."""
        return {"id": self.repo_id, "revision": self.revision, "commit": self.commit}


def cache_dir() -> Path:
    """The Hub cache in use. HF_HUB_CACHE is read again here (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def offline(repo_type: str = "model") -> bool:
    from huggingface_hub import constants

    names = ["HF_HUB_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if repo_type == "dataset" else [])
    return constants.HF_HUB_OFFLINE or any(os.environ.get(n, "").lower() in _TRUE for n in names)


def resolve(repo_id: str, revision: str | None, repo_type: str = "model", fetch: bool = True) -> Resolved:
    """The snapshot of `repo_id` at `revision` (default main): downloaded online, from the cache offline or
    with `fetch=False`. Raises a one-line LifecycleError naming the id, the revision and the cache when it
    cannot be had."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    revision = revision or "main"
    cache = cache_dir()
    is_offline = offline(repo_type)
    what = "data set" if repo_type == "dataset" else "model"
    try:
        path = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache,
                                      local_files_only=is_offline or not fetch,
                                      allow_patterns=MODEL_FILES if repo_type == "model" else None,
                                      ignore_patterns=["*.py"]))  # no loading scripts: nothing here runs code
    except LocalEntryNotFoundError:
        if is_offline:
            how = (f"offline ({'HF_DATASETS_OFFLINE / ' if repo_type == 'dataset' else ''}HF_HUB_OFFLINE): "
                   "download it once online, or set HF_HUB_CACHE to a cache that holds it")
        elif not fetch:
            how = "`lifecycle validate` fetches it (or set HF_HUB_CACHE to a cache that holds it)"
        else:
            how = "the Hub could not be reached; check the connection or pre-fill the cache"
        raise LifecycleError(f"Hub {what} '{repo_id}' at revision '{revision}' is not in the cache {cache}; "
                             f"{how}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:  # not found, gated, a revision that does not exist
        reason = " ".join(str(exc).split())[:200]
        raise LifecycleError(f"Hub {what} '{repo_id}' at revision '{revision}' cannot be fetched into {cache}: "
                             f"{reason}") from None
    return Resolved(repo_id, revision, path.name, path)


def resolve_model(repo_id: str, revision: str | None, fetch: bool = True) -> Resolved:
    """A model repo, refused unless its snapshot holds a config and safetensors weights."""
    found = resolve(repo_id, revision, fetch=fetch)
    where = f"Hub model '{repo_id}' (revision '{found.revision}', commit {found.commit[:12]})"
    if not (found.path / "config.json").is_file():
        raise LifecycleError(f"{where} has no config.json; name a Hugging Face transformers model repo")
    if not any(found.path.rglob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLES for p in found.path.rglob(pattern))
        held = f"only pickle weights ({', '.join(pickles)})" if pickles else "no safetensors weights"
        raise LifecycleError(f"{where} has {held}; only safetensors are loaded (no pickles): pick a revision "
                             "or repo that ships model.safetensors")
    return found


def rows(path: Path, config: str | None, split: str):
    """The rows of a data set snapshot's `config` (None: the default or only one) and `split` (a split name,
    or an expression such as train+validation), prepared in `datasets`' own cache. Class-label columns
    give their names (a Hub data set stores labels as ids of a ClassLabel feature)."""
    from datasets import ClassLabel, load_dataset

    try:
        # HF_DATASETS_CACHE read again here too (`datasets` reads it once, at import); None: its default
        ds = load_dataset(str(path), name=config, split=split, cache_dir=os.environ.get("HF_DATASETS_CACHE"))
    except (ValueError, KeyError, FileNotFoundError) as exc:  # no such config / split, no data files
        reason = " ".join(str(exc).split())[:300]
        raise LifecycleError(f"{path}: config {config!r}, split {split!r}: {reason}") from None
    names = {col: f.names for col, f in ds.features.items() if isinstance(f, ClassLabel)}
    for row in ds:
        yield {**row, **{col: n[row[col]] for col, n in names.items() if 0 <= (row[col] or 0) < len(n)}}
