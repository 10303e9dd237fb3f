"""A classical baseline for context: TF-IDF features + logistic regression, fit on the task's
train split and scored on the same test split the model is scored on. On BBC News it reaches ~0.98 in
seconds; a small transformer that scores below it is worth knowing about."""

from __future__ import annotations


def tfidf_logreg(data, seed: int = 0) -> dict[str, float]:
    """`data` is LabelledData; returns baseline_tfidf_accuracy / _f1_macro / _f1_micro (0..1)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from lifecycle.evaluation import classification_metrics

    train, test = data.splits["train"], data.splits["test"]
    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2),
                          LogisticRegression(C=10.0, max_iter=2000, random_state=seed))
    model.fit(train["text"], train["label"])
    scores = classification_metrics(model.predict(test["text"]), test["label"])
    return {f"baseline_tfidf_{k}": v for k, v in scores.items()}
