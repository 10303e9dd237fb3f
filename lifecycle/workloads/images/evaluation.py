"""Scores of image models and the baseline every image report shows beside them: an RBF support-vector
machine (scikit-learn's defaults) on the same preprocessed pixels of the same training split, the bar a
small vision transformer has to clear on small images (as TF-IDF is for text, trees are for tables)."""

from __future__ import annotations

# what masked-image pre-training reports (lifecycle.workloads.images.masked)
MASKED_IMAGE_METRICS = ("reconstruction_loss", "reconstruction_loss_init", "probe_accuracy", "probe_accuracy_init",
                        "probe_gain", "train_seconds", "params_total")
# what contrastive (SimCLR) pre-training of an image model reports (lifecycle.workloads.images.contrastive)
IMAGE_CONTRASTIVE_METRICS = ("contrastive_loss", "contrastive_loss_chance", "contrastive_loss_init", "contrastive_top1",
                             "contrastive_top1_chance", "contrastive_top1_init", "probe_accuracy",
                             "probe_accuracy_init", "probe_gain", "train_seconds", "params_total")


def svm_baseline(data, seed: int = 0) -> dict[str, float]:
    """`data`: a labelled lifecycle.data.images.ImageData; returns baseline_svm_<score> on its test split."""
    from sklearn.svm import SVC

    from lifecycle.evaluation.classes import classification_scores

    def flat(split):
        x = data.pixel_values(split)
        return x.reshape(len(x), -1)

    svm = SVC(kernel="rbf", gamma="scale", random_state=seed).fit(flat("train"), data.target("train"))
    decision = svm.decision_function(flat("test"))  # one-vs-rest scores (n, classes): argmax = the SVM's answer
    scores = classification_scores(decision, data.target("test"))
    return {f"baseline_svm_{k}": v for k, v in scores.items()}
