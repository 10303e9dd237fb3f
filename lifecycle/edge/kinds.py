"""Inputs kinds and answers kinds: the built-in ones (INPUTS here, ANSWERS in lifecycle.edge.answers) and
those a package outside lifecycle adds through Python entry points, so a workload of its own is served by
this runtime without editing it.

An inputs kind is a class constructed from (the model directory, schema.json as a dict) that has:
    max_length                              tokens an input may have (0 where inputs have no length)
    sample()                                one input the model accepts (a warm-up)
    recorded(entry)                         the input of a manifest sample-prediction entry (Predictor.check)
    feeds(predictor, items, pad_to=None)    the graph's feeds for items (Predictor.encode)
    outputs(predictor, items, batch_size)   the graph's output per item, float32, in input order (Predictor.logits)
and optionally `tokenizer`, `table` or `image` (its preprocessor, which the service's request checks read).
An answers kind is a function (outputs, labels) -> the answer per input, as JSON values or an array.

A plug-in package declares them in its metadata (pyproject.toml):
    [project.entry-points."lifecycle.edge.inputs"]
    vectors = "mypackage.edge:VectorInputs"
    [project.entry-points."lifecycle.edge.answers"]
    sign = "mypackage.edge:signs"
and its model's schema.json names them ("inputs_kind", "answers_kind"; "preprocessor": null when the model
directory holds no preprocessor file). Entry points are read once, and only for a kind that is not built
in: a plug-in cannot replace a built-in kind (one of the same name is ignored), so installing a package
never changes how an existing model is answered."""

from __future__ import annotations

import functools

from .answers import ANSWERS
from .audio_inputs import AudioInputs
from .bundle import BundleError
from .decoding import PromptInputs
from .image_inputs import ImageInputs
from .table_inputs import RowInputs
from .text_inputs import TextInputs

INPUTS = {"text": TextInputs, "prompts": PromptInputs, "rows": RowInputs, "images": ImageInputs,
          "audio": AudioInputs}


def inputs_kind(name: str, where) -> type:
    """The class of inputs kind `name`; BundleError naming `where` (schema.json) when none is installed."""
    return _kind(INPUTS, "lifecycle.edge.inputs", "inputs_kind", name, where)


def answers_kind(name: str, where):
    """The answer function of answers kind `name` (None for a generator's tokens, decoded step by step by
    Predictor.generate); BundleError naming `where` (schema.json) when none is installed."""
    return _kind(ANSWERS, "lifecycle.edge.answers", "answers_kind", name, where)


def _kind(builtin: dict, group: str, field: str, name: str, where):
    if name in builtin:
        return builtin[name]
    point = _entry_points(group).get(name)
    if point is None:
        raise BundleError(f"{where}: {field} '{name}' is not built in ({', '.join(builtin)}) and no installed "
                          f"package adds it (entry point group '{group}'); install the workload package the model "
                          "was made with")
    try:  # only the kind asked for is imported: a broken plug-in does not stop the others
        return point.load()
    except Exception as exc:  # noqa: BLE001 - whatever a third-party import raises, the model cannot be opened
        raise BundleError(f"{where}: {field} '{name}' is {point.value} (entry point group '{group}'), which "
                          f"fails to load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                          "reinstall the package that provides it") from None


@functools.cache
def _entry_points(group: str) -> dict:
    """name -> entry point in `group` over every installed distribution, read once (a test that changes
    sys.path clears it: `_entry_points.cache_clear()`)."""
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=group)}
