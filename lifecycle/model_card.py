"""model_card.md: what a released model is for, what it was trained and tested on, how well it did
(with intervals where the run measured them), every gate verdict, where it was measured, where it
came from (parent artifacts by hash) and the weaknesses the run itself found.

Built only from manifests (the artifact's, its parents', the run's pipeline.json), so the same
artifact always gives the same card: a bundle stays byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lifecycle.artifact import MANIFEST
from lifecycle.evaluation import TEST_PREDICTIONS, Predictions
from lifecycle.report import fmt
from lifecycle.schema import Task

SMALL_TEST = 1000  # below this, a one-example difference is more than 0.1 point


def render(art, release: dict | None = None) -> str:
    """The card of artifact `art` (lifecycle.artifact.Artifact); `release`: its registry entry, if any."""
    m = art.manifest
    run = _pipeline(art.path)
    chain = lineage(art)
    lines = [f"# Model card: {art.path.parent.name} / {m.get('stage')} ({m.get('stage_kind')})", ""]
    if release:
        lines += [f"Released as `{release['model']}` in the MLflow Model Registry (stage `{release['stage']}`, "
                  f"digest `{release['digest'][:16]}`).", ""]

    lines += ["## Intended task", ""]
    task = (run or {}).get("task") or {}
    labels = _labels(art)
    kind = task.get("type", Task.model_fields["type"].default)
    lines.append(f"- {kind}" + (f" into {len(labels)} labels: {', '.join(map(str, labels))}" if labels else ""))
    if task:
        lines.append(f"- data source `{task.get('data')}`, texts truncated to {task.get('max_length')} tokens")
    lines.append(f"- artifact kind `{art.kind}`, content digest `{art.digest[:16]}`")

    lines += ["", "## Data", "", "| source | fingerprint | definition |", "|---|---|---|"]
    sources = (run or {}).get("data", {})
    for name, fp in sorted(m.get("data", {}).items()):
        spec = {k: v for k, v in sources.get(name, {}).items() if v not in (None, [], {})}
        lines.append(f"| {name} | `{str(fp)[:16]}` | {_short(spec)} |")
    n_test, test_fp = _test_set(art)
    if n_test:
        lines += ["", f"Test predictions: {n_test} examples (test fingerprint `{test_fp[:16]}`), kept in the artifact "
                  f"({TEST_PREDICTIONS}) for paired comparison with later candidates."]

    metrics = m.get("metrics", {})
    lines += ["", "## Metrics", "", "| metric | value | 95% interval |", "|---|---|---|"]
    for key in sorted(k for k in metrics if not k.endswith(("_std", "_ci_low", "_ci_high"))):
        lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        interval = f"[{fmt(lo)}, {fmt(hi)}] across seeds" if lo is not None and hi is not None else "-"
        lines.append(f"| {key} | {fmt(metrics[key])} | {interval} |")

    lines += ["", "## Gates", ""]
    gates = [(s, g) for s in chain for g in s.get("gates", [])]
    if gates:
        lines += ["| stage | gate | value | interval, p | verdict |", "|---|---|---|---|---|"]
        for stage, g in gates:
            verdict = "pass" if g["passed"] else ("fail" if g.get("on_fail", "stop") == "stop" else "warn")
            iv, p = g.get("interval"), g.get("p_value")
            stat = " ".join(x for x in (f"[{iv[0]:+.4f}, {iv[1]:+.4f}]" if iv else "",
                                        f"p={p:.3g}" if p is not None else "") if x) or "-"
            lines.append(f"| {stage.get('stage')} | `{g['bound']}` | {fmt(g.get('value'))} | {stat} | {verdict} |")
    else:
        lines.append("No gates were configured.")

    env = m.get("environment") or {}
    libs = ", ".join(f"{k} {v}" for k, v in sorted((env.get("libraries") or {}).items()) if v)
    lines += ["", "## Environment", "",
              f"- {env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('threads')} threads), GPU: {env.get('gpu') or 'none'}",
              f"- Python {env.get('python')} on {env.get('platform')}", f"- {libs}",
              f"- lifecycle {m.get('lifecycle_version')}, commit {env.get('git_commit') or 'unknown'}"]

    lines += ["", "## Lineage", "", "| stage | kind | cache key | digest |", "|---|---|---|---|"]
    for s in chain:
        lines.append(f"| {s.get('stage')} | {s.get('stage_kind')} | `{s.get('cache_key', '')[:16]}` | "
                     f"`{s.get('digest', '')[:16]}` |")
    lines += ["", "## Limitations found by the run", ""]
    lines += [f"- {x}" for x in limitations(chain, n_test)] or ["- none recorded"]
    return "\n".join(lines) + "\n"


def lineage(art) -> list[dict]:
    """This artifact's manifest and its parents' (oldest first), each with its digest; a parent that
    is no longer on disk ends the chain with what the child recorded of it."""
    from lifecycle.artifact import stable_hash

    chain, manifest, path = [], art.manifest, art.path
    while manifest is not None and len(chain) < 50:
        chain.append({**manifest, "digest": stable_hash(manifest.get("files", {})), "path": str(path)})
        parent = manifest.get("parent")
        manifest = None
        if parent:
            p = Path(parent["path"])
            if (p / MANIFEST).is_file():
                manifest, path = json.loads((p / MANIFEST).read_text()), p
            else:
                chain.append({"stage": p.name, "stage_kind": "?", "cache_key": parent.get("cache_key", ""),
                              "digest": parent.get("digest", "")})
    return chain[::-1]


def limitations(chain: list[dict], n_test: int | None) -> list[str]:
    out = []
    for s in chain:
        name, m = s.get("stage"), s.get("metrics", {})
        gain = m.get("pretraining_gain")
        if _num(gain) and gain < 0:
            out.append(f"{name}: pre-training did not pay off here: the from-scratch control scored higher "
                       f"(pretraining_gain {gain:+.4f})")
        acc, base = m.get("accuracy"), m.get("baseline_tfidf_accuracy")
        if _num(acc) and _num(base) and base > acc:
            out.append(f"{name}: a TF-IDF + logistic regression baseline is more accurate ({base:.4f} vs {acc:.4f})")
        change = m.get("general_perplexity_change")
        if _num(change) and change > 0.05:
            out.append(f"{name}: adaptation raised perplexity on general text by {change:.0%} (forgetting)")
        agree = m.get("argmax_agreement")
        if _num(agree) and agree < 1:
            out.append(f"{name}: {1 - agree:.2%} of predictions differ from its parent's")
        for g in s.get("gates", []):
            if not g["passed"]:
                out.append(f"{name}: gate `{g['bound']}` failed ({'warn only' if g.get('on_fail') == 'warn' else 'stop'})"
                           + (f": {g['message']}" if g.get("message") else ""))
    if n_test and n_test < SMALL_TEST:
        out.append(f"the test set has {n_test} examples: one example is {100 / n_test:.2g} points of accuracy; "
                   "compare releases with paired gates (vs: release:NAME), not by the point estimate")
    return out


def _pipeline(path: Path) -> dict | None:
    resolved = path.parent / "pipeline.json"
    try:
        return json.loads(resolved.read_text())["pipeline"]
    except (OSError, ValueError, KeyError):
        return None


def _labels(art) -> list:
    if (art.path / "labels.json").is_file():
        return json.loads((art.path / "labels.json").read_text())
    labels = art.manifest.get("details", {}).get("labels")
    if labels:
        return labels
    config = art.path / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=int)]
    return []


def _test_set(art) -> tuple[int | None, str]:
    path = art.path / TEST_PREDICTIONS
    if not path.is_file():
        return None, ""
    preds = Predictions.load(path)
    return len(preds.ids), preds.fingerprint


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(spec: dict) -> str:
    text = json.dumps(spec, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."
