"""Tables: csv / parquet files or bundled data sets, a declared or inferred schema, deterministic splits,
and preprocessing fitted on the training split only.

A table source is a data source with a `table:` section (its target, column types, columns to drop):

    data:
      penguins: {format: palmerpenguins, table: {target: species, drop: [year]}}
      cancer: {format: sklearn, dataset: breast_cancer, table: {target: target}}
      mine: {format: parquet, path: rows.parquet, table: {target: churned, categorical: [plan]}}

Columns not declared are inferred from the training split: booleans from a bool dtype, numbers from a
numeric dtype, everything else categorical. A missing value stays missing (the preprocessing marks it,
lifecycle.edge.TablePreprocessing); vocabularies and mean/std/range are fitted on train and travel with
the model as preprocessing.json, and the same transform serves training, the edge runtime and the service.
pandas is imported late: building a config must stay cheap.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from lifecycle import LifecycleError
from lifecycle.data.splits import check_scored_classes
from lifecycle.schema import Strict

if TYPE_CHECKING:
    import pandas as pd

# `src` below is a lifecycle.data.sources.DataSource and `pipeline` a PipelineView, left unannotated: the
# sources module imports this one (for its spec and formats), and this one must not import it back.

TABLE_FORMATS = ("csv", "parquet", "sklearn", "palmerpenguins")
PACKAGED = {"sklearn": "scikit-learn", "palmerpenguins": "palmerpenguins"}  # formats that ship their data
SKLEARN_TABLES = ("breast_cancer", "diabetes")
MAX_CATEGORIES = 1000  # an inferred text column with more distinct values is likely an id or free text


class TableSpec(Strict):
    """The columns of a table (`table:` of a data source). Undeclared columns are inferred."""

    target: str = Field(description="the column to predict")
    numeric: list[str] = []
    categorical: list[str] = []
    boolean: list[str] = []
    drop: list[str] = []  # ignored columns (ids, leaks)
    # Train values seen fewer times go to the "unknown" id, so that embedding is trained on something.
    min_frequency: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _each_column_once(self) -> TableSpec:
        seen: dict[str, str] = {}
        for kind in ("numeric", "categorical", "boolean", "drop"):
            for col in getattr(self, kind):
                if col == self.target:
                    raise ValueError(f"{kind}: '{col}' is the target; the target is not a feature")
                if col in seen:
                    raise ValueError(f"{kind}: '{col}' is also listed under {seen[col]}; give each column one role")
                seen[col] = kind
        return self


@dataclass
class Schema:
    """The resolved column types (declared plus inferred), in the order the model sees them."""

    target: str
    target_kind: Literal["numeric", "categorical"]
    numeric: list[str]
    categorical: list[str]
    boolean: list[str]

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical, *self.boolean]


@dataclass
class TableData:
    splits: dict[str, pd.DataFrame]  # train / validation / test: feature columns + the target, raw values
    schema: Schema
    preprocessing: dict  # JSON: what lifecycle.edge.TablePreprocessing reads (fitted on train)
    labels: list[str] | None  # class names (target id -> name) for a categorical target; None: regression
    stats: dict[str, int]

    def features(self, split: str):
        """(feeds, counts) of a split: the model's input arrays and what preprocessing counted."""
        from lifecycle.edge import TablePreprocessing

        frame, pre = self.splits[split], TablePreprocessing(self.preprocessing)
        return pre.transform_columns({c: frame[c].tolist() for c in pre.columns}, len(frame))

    def read_through(self, preprocessing: dict, where) -> TableData:
        """This table read through another model's preprocessing (a pre-trained table model's, as a text
        model keeps its tokenizer); every column it needs must be here."""
        import dataclasses

        needed = [c["name"] for c in (*preprocessing["numeric"], *preprocessing["categorical"])]
        absent = [c for c in needed if c not in self.splits["train"].columns]
        if absent:
            raise LifecycleError(f"{where}: the model was trained on columns this table lacks: {absent}; pre-train "
                                 "and fine-tune on tables with the same feature columns")
        return dataclasses.replace(self, preprocessing=preprocessing)

    def target(self, split: str):
        """Class ids (int64) for a classification target, floats for a regression one."""
        import numpy as np

        values = self.splits[split][self.schema.target]
        if self.labels is None:
            return values.to_numpy(dtype=np.float32)
        index = {name: i for i, name in enumerate(self.labels)}
        return np.array([index.get(v, -1) for v in values], dtype=np.int64)  # -1: a class train never saw


# ------------------------------------------------------------------------------------------ reading
def read_table(src, pipeline) -> tuple[pd.DataFrame, str]:
    """The whole table and a description of where it came from (for messages)."""
    import pandas as pd

    if src.format == "sklearn":
        from sklearn import datasets

        frame = getattr(datasets, f"load_{src.dataset}")(as_frame=True).frame
        return frame, f"sklearn {src.dataset}"
    if src.format == "palmerpenguins":
        try:
            from palmerpenguins import load_penguins
        except ImportError:
            raise LifecycleError("the palmerpenguins package is not installed: pip install palmerpenguins") from None
        return load_penguins(), "palmerpenguins"
    frames = []
    files = src.files(pipeline)
    for f in files:
        try:
            frames.append(pd.read_parquet(f) if src.format == "parquet"
                          else pd.read_csv(f, encoding=src.encoding))
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise LifecycleError(f"{f}: not a readable {src.format} table ({str(exc)[:200]}); check `format` "
                                 "and the file") from None
    where = ", ".join(map(str, files[:3]))
    if len({tuple(f.columns) for f in frames}) > 1:
        raise LifecycleError(f"{where}: the files have different columns; one table per source")
    return pd.concat(frames, ignore_index=True), where


def package_version(fmt: str) -> str | None:
    """The version of the package a bundled table comes from (its fingerprint), or None for files."""
    return importlib.metadata.version(PACKAGED[fmt]) if fmt in PACKAGED else None


# ---------------------------------------------------------------------------------- schema and split
def resolve_schema(frame: pd.DataFrame, spec: TableSpec, where: str) -> Schema:
    """Declared roles checked against the table's columns, the rest inferred from their dtypes."""
    import pandas as pd

    columns = list(frame.columns)
    for kind in ("target", "numeric", "categorical", "boolean", "drop"):
        named = [spec.target] if kind == "target" else getattr(spec, kind)
        for col in named:
            if col not in frame.columns:
                raise LifecycleError(f"{where}: table.{kind}: no column '{col}' (columns: {columns})")
    declared = {spec.target, *spec.numeric, *spec.categorical, *spec.boolean, *spec.drop}
    numeric, categorical, boolean = list(spec.numeric), list(spec.categorical), list(spec.boolean)
    for col in columns:
        if col in declared:
            continue
        dtype = frame[col].dtype
        if pd.api.types.is_bool_dtype(dtype):
            boolean.append(col)
        elif pd.api.types.is_numeric_dtype(dtype):
            numeric.append(col)
        else:
            if frame[col].nunique() > MAX_CATEGORIES:
                raise LifecycleError(f"{where}: column '{col}' has {frame[col].nunique()} distinct values; is it an "
                                     "id or free text? list it under table.drop, or under table.categorical to keep it")
            categorical.append(col)
    for col in spec.numeric:
        bad = frame[col][frame[col].notna() & pd.to_numeric(frame[col], errors="coerce").isna()]
        if len(bad):
            raise LifecycleError(f"{where}: table.numeric: column '{col}' holds non-numbers ({bad.iloc[0]!r} at row "
                                 f"{bad.index[0]}); list it under table.categorical, or fix the value")
    target_numeric = pd.api.types.is_float_dtype(frame[spec.target].dtype)
    if not (numeric or categorical or boolean):
        raise LifecycleError(f"{where}: no feature columns left besides the target '{spec.target}'")
    return Schema(spec.target, "numeric" if target_numeric else "categorical", numeric, categorical, boolean)


def canonical(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Values as the preprocessing reads them: numeric columns float (NaN missing), categorical columns
    text (None missing; 1.0 read from a file is the category "1"), booleans left for the transform.
    The features come first and the target last (task plug-ins read a split's rows that way)."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for col in schema.numeric:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in schema.categorical:
        out[col] = pd.Series([None if pd.isna(v) else _category(v) for v in frame[col]], index=frame.index, dtype=object)
    for col in schema.boolean:
        out[col] = pd.Series([None if pd.isna(v) else v for v in frame[col]], index=frame.index, dtype=object)
    target = frame[schema.target]
    out[schema.target] = (target.astype("float64") if schema.target_kind == "numeric"
                          else pd.Series([None if pd.isna(v) else _category(v) for v in target], index=frame.index,
                                         dtype=object))
    return out


def _category(v) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def fit_preprocessing(train: pd.DataFrame, schema: Schema, min_frequency: int = 1) -> dict:
    """The preprocessing parameters, from the training split only (lifecycle.edge.TablePreprocessing)."""
    import numpy as np

    numeric = []
    for col in schema.numeric:
        values = train[col].to_numpy(dtype=np.float64)
        seen = values[~np.isnan(values)]
        if not len(seen):
            raise LifecycleError(f"column '{col}': every training value is missing; drop it (table.drop)")
        std = float(seen.std())
        numeric.append({"name": col, "mean": float(seen.mean()), "std": std if std > 1e-12 else 1.0,
                        "min": float(seen.min()), "max": float(seen.max())})
    categorical = []
    for col in schema.categorical:
        counts = train[col].dropna().value_counts()
        kept = sorted(v for v, n in counts.items() if n >= min_frequency)  # sorted: no dependence on row order
        categorical.append({"name": col, "vocabulary": kept, "boolean": False})
    categorical += [{"name": col, "vocabulary": ["false", "true"], "boolean": True} for col in schema.boolean]
    return {"version": 1, "target": schema.target, "numeric": numeric, "categorical": categorical}


def load_table(src, pipeline, seed: int) -> TableData:
    """Read, resolve the schema, split (stratified for a categorical target), fit preprocessing on train."""
    frame, where = read_table(src, pipeline)
    schema = resolve_schema(frame, src.table, where)
    frame = canonical(frame, schema)
    missing_target = int(frame[schema.target].isna().sum())
    frame = frame[frame[schema.target].notna()].reset_index(drop=True)
    if len(frame) < 10:
        raise LifecycleError(f"{where}: {len(frame)} rows with a target value; a table task needs at least 10")
    strat = frame[schema.target] if schema.target_kind == "categorical" and src.split.stratify else None
    rest, test = _split(frame, src.split.test, seed, strat)
    frac = src.split.validation / max(1e-9, 1 - src.split.test)
    train, val = _split(rest, frac, seed, None if strat is None else rest[schema.target])
    splits = {"train": train, "validation": val, "test": test}
    if src.limit:
        splits = {k: v.iloc[: src.limit] for k, v in splits.items()}
    for name, part in splits.items():
        if not len(part):
            raise LifecycleError(f"{where}: the {name} split is empty; lower split fractions or add rows")
    labels = None
    if schema.target_kind == "categorical":
        labels = sorted(set(splits["train"][schema.target]))
        if len(labels) < 2:
            raise LifecycleError(f"{where}: the train split has one class of '{schema.target}'; a classifier needs two")
        check_scored_classes(where, {name: list(part[schema.target]) for name, part in splits.items()})
    else:
        for name, part in splits.items():  # R² and errors against a constant target say nothing about a model
            if part[schema.target].nunique() < 2:
                raise LifecycleError(f"{where}: the target '{schema.target}' has one value "
                                     f"({part[schema.target].iloc[0]}) in the {name} split; a regression is scored "
                                     "on a target that varies: add rows or change the split")
    return TableData(splits, schema, fit_preprocessing(splits["train"], schema, src.table.min_frequency), labels,
                     {"rows": len(frame), "dropped_missing_target": missing_target})


def _split(frame: pd.DataFrame, frac: float, seed: int, strat) -> tuple[pd.DataFrame, pd.DataFrame]:
    if frac <= 0:
        return frame, frame.iloc[:0]
    from sklearn.model_selection import train_test_split

    try:
        a, b = train_test_split(frame, test_size=frac, random_state=seed, stratify=strat)
    except ValueError:  # a class too small to stratify: a plain seeded split
        a, b = train_test_split(frame, test_size=frac, random_state=seed)
    return a.reset_index(drop=True), b.reset_index(drop=True)
