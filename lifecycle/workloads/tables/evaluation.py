"""Scores of table models, and the baseline every table report shows beside them: scikit-learn's
HistGradientBoosting fit on the same training split (gradient-boosted trees are the bar a tabular
network has to clear; on small tables they often win, and the report should say so)."""

from __future__ import annotations

from lifecycle.evaluation.classes import classification_scores

# what masked-feature pre-training reports (lifecycle.workloads.tables.masked_features)
MASKED_FEATURE_METRICS = ("reconstruction_loss", "numeric_rmse", "categorical_accuracy", "probe_accuracy",
                          "probe_accuracy_init", "probe_gain", "train_seconds", "params_total")
# what contrastive (SCARF) pre-training of a table model reports (lifecycle.workloads.tables.contrastive)
SCARF_METRICS = ("contrastive_loss", "contrastive_loss_chance", "contrastive_top1", "contrastive_top1_chance",
                 "probe_accuracy", "probe_accuracy_init", "probe_gain", "train_seconds",
                 "params_total")


def boosting_features(feeds: dict):
    """The preprocessed feeds as trees take them: numbers with NaN where missing, category ids last
    (scikit-learn treats them as categorical; id 0, missing, is a category of its own)."""
    import numpy as np

    numeric = np.where(feeds["numeric_missing"] > 0, np.nan, feeds["numeric"])
    x = np.concatenate([numeric, feeds["categorical"].astype(np.float64)], axis=1)
    is_cat = [False] * numeric.shape[1] + [True] * feeds["categorical"].shape[1]
    return x, is_cat


def gradient_boosting(data, seed: int = 0) -> dict[str, float]:
    """`data`: a classification TableData; returns baseline_gbdt_<score> on its test split."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    x_train, is_cat = boosting_features(data.features("train")[0])
    x_test, _ = boosting_features(data.features("test")[0])
    model = HistGradientBoostingClassifier(categorical_features=is_cat or None, random_state=seed)
    model.fit(x_train, data.target("train"))
    proba = model.predict_proba(x_test)
    full = np.full((len(x_test), len(data.labels)), 1e-12)
    full[:, model.classes_] = proba  # a class absent from train gets no probability
    scores = classification_scores(np.log(full), data.target("test"))
    return {f"baseline_gbdt_{k}": v for k, v in scores.items()}


TABLE_REGRESSION = ("r2", "rmse", "mae")  # r2 first: the headline, higher is better like every other headline


def regression_scores(predicted, targets) -> dict[str, float]:
    """R2, RMSE and MAE (in the target's units) of predicted values (n,) or (n, 1)."""
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted, targets = np.asarray(predicted, dtype=np.float64).reshape(-1), np.asarray(targets, dtype=np.float64)
    if not np.isfinite(predicted).all():  # a NaN model fails its gates instead of crashing the metric
        return {"r2": float("nan"), "rmse": float("nan"), "mae": float("nan")}
    return {"r2": float(r2_score(targets, predicted)), "rmse": float(np.sqrt(mean_squared_error(targets, predicted))),
            "mae": float(mean_absolute_error(targets, predicted))}


def gradient_boosting_regression(data, seed: int = 0) -> dict[str, float]:
    """`data`: a regression TableData; returns baseline_gbdt_<score> on its test split."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    x_train, is_cat = boosting_features(data.features("train")[0])
    x_test, _ = boosting_features(data.features("test")[0])
    model = HistGradientBoostingRegressor(categorical_features=is_cat or None, random_state=seed)
    model.fit(x_train, data.target("train"))
    return {f"baseline_gbdt_{k}": v for k, v in regression_scores(model.predict(x_test), data.target("test")).items()}


TABLE_ANOMALY = ("auroc", "average_precision")


def anomaly_scores(scores, is_anomaly) -> dict[str, float]:
    """AUROC and average precision of anomaly scores (higher: more anomalous) against labelled anomalies."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, is_anomaly = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(is_anomaly, dtype=bool)
    if not np.isfinite(scores).all() or is_anomaly.all() or not is_anomaly.any():
        return {"auroc": float("nan"), "average_precision": float("nan")}  # undefined: its gates fail
    return {"auroc": float(roc_auc_score(is_anomaly, scores)),
            "average_precision": float(average_precision_score(is_anomaly, scores))}


def anomaly_baselines(data, is_anomaly: dict, seed: int = 0) -> dict[str, float]:
    """Two bars for an anomaly scorer on `data`'s test split (`is_anomaly`: split -> bool array):
    baseline_iforest_<score>, scikit-learn's IsolationForest fitted on the training rows without their
    labels, as the scorer is: the fair comparison; baseline_gbdt_<score>, gradient-boosted trees fitted
    on the training rows' anomaly labels: what labels would buy, a ceiling rather than a rival."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest

    x_train, is_cat = boosting_features(data.features("train")[0])
    x_test, _ = boosting_features(data.features("test")[0])
    # IsolationForest takes no NaN: a missing number is the training median, a category its id
    fill = np.nanmedian(x_train, axis=0)
    forest = IsolationForest(random_state=seed).fit(np.where(np.isnan(x_train), fill, x_train))
    iforest = anomaly_scores(-forest.score_samples(np.where(np.isnan(x_test), fill, x_test)), is_anomaly["test"])
    trees = HistGradientBoostingClassifier(categorical_features=is_cat or None, random_state=seed)
    trees.fit(x_train, is_anomaly["train"])
    gbdt = anomaly_scores(trees.predict_proba(x_test)[:, list(trees.classes_).index(True)], is_anomaly["test"])
    return {**{f"baseline_iforest_{k}": v for k, v in iforest.items()},
            **{f"baseline_gbdt_{k}": v for k, v in gbdt.items()}}
