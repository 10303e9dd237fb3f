"""What audio reports beside its models: the MFCC baseline (scikit-learn's logistic regression on mel-frequency
cepstral coefficients of the same clips, the classical bar for spoken digits), and scores on the other
sources the task's data names in `audio.also_test` (out-of-distribution sets such as real speech of other
speakers) with a bootstrap interval, since such sets are small.

MFCCs are the type-II DCT of the model's own log-mel frames (lifecycle.edge.AudioPreprocessing.fbank), the
first 13 kept; a clip becomes their mean and standard deviation over the whole clip and their means over
each third of it (order matters for "six" vs "seven"), 78 numbers."""

from __future__ import annotations

import numpy as np

# what masked-spectrogram pre-training and adaptation report (lifecycle.workloads.audio.masked)
MASKED_METRICS = ("reconstruction_loss", "reconstruction_loss_init", "probe_accuracy", "probe_accuracy_init",
                  "probe_gain", "train_seconds", "params_total")
CEPSTRA = 13
RESAMPLES, LEVEL = 2000, 0.95


def mfcc_features(preprocessing: dict, waves: list) -> np.ndarray:
    from scipy.fft import dct

    from lifecycle.edge import AudioPreprocessing

    pre = AudioPreprocessing(preprocessing)
    out = []
    for wave in waves:
        c = dct(pre.fbank(wave).astype(np.float64), type=2, norm="ortho", axis=1)[:, :CEPSTRA]
        thirds = [part.mean(0) for part in np.array_split(c, 3) if len(part)] or [c.mean(0)]
        thirds += [thirds[-1]] * (3 - len(thirds))  # a clip of one or two frames
        out.append(np.concatenate([c.mean(0), c.std(0), *thirds]))
    return np.array(out)


def accuracy_interval(correct, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `correct` (clips resampled with replacement)."""
    correct = np.asarray(correct, dtype=np.float64)
    if not len(correct):
        return float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(correct, (RESAMPLES, len(correct))).mean(1)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def also_sets(data, ctx) -> dict:
    """name -> that source's test clips (AudioData) read through `data`'s preprocessing."""
    return {name: ctx.data(name).read_through(data.preprocessing, name) for name in data.spec.also_test}


def scored_set(predictions, other, labels: list[str], seed: int) -> dict:
    """Accuracy (and its interval) of class ids `predictions` on `other`'s test clips whose label is one of
    `labels` (a clip of a word the model was never taught is counted in `clips` but not scored)."""
    known = np.array([label in labels for label in other.splits["test"].labels])
    truth = np.array([labels.index(label) if label in labels else -1 for label in other.splits["test"].labels])
    correct = (predictions == truth)[known]
    low, high = accuracy_interval(correct, seed)
    return {"accuracy": float(correct.mean()) if len(correct) else float("nan"), "accuracy_ci_low": low,
            "accuracy_ci_high": high, "clips": int(len(known)), "scored_clips": int(known.sum()),
            "correct": [int(c) for c in correct]}  # per scored clip, in the source's order: paired comparisons


def also_test(logits_of, data, ctx) -> dict:
    """The model's scores (`logits_of(input_values)`) on every `audio.also_test` source of the task's data."""
    return {name: scored_set(logits_of(other.features("test")).argmax(-1), other, data.labels, ctx.seed)
            for name, other in also_sets(data, ctx).items()}


def mfcc_baseline(data, ctx) -> tuple[dict, dict, list[int]]:
    """(baseline_mfcc_<score> on the task's test split, {also_test source: {"baseline_mfcc_accuracy", ...}},
    its test predictions): standardised MFCC statistics into a logistic regression fitted on the training split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lifecycle.evaluation.classes import classification_scores

    def features(d, split):
        return mfcc_features(data.preprocessing, d.splits[split].waves)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=ctx.seed))
    model.fit(features(data, "train"), data.target("train"))
    decision = model.decision_function(features(data, "test"))
    scores = classification_scores(decision, data.target("test"))
    also = {name: {f"baseline_mfcc_{k}": v for k, v in
                   scored_set(model.predict(features(other, "test")), other, data.labels, ctx.seed).items()
                   if k.startswith("accuracy") or k == "correct"}
            for name, other in also_sets(data, ctx).items()}
    return {f"baseline_mfcc_{k}": v for k, v in scores.items()}, also, [int(i) for i in decision.argmax(-1)]
