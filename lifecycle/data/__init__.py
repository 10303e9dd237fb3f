"""Data layer: read a source, clean it, split it deterministically.

`load(source, pipeline)` returns `LabelledData` for a labelled source (lifecycle.data.labelled) and
`Corpus` for an unlabelled one (lifecycle.data.corpus). Splits depend only on the data and the seed,
never on file-system order.
"""

from __future__ import annotations

from lifecycle.data.audio import AudioData, load_audio
from lifecycle.data.images import ImageData, load_images
from lifecycle.data.labelled import (
    Corpus,
    LabelledData,
    check_classes,
    clean,
    describe_files,
    load_labelled,
    read_records,
    strip_pos_tags,
)
from lifecycle.data.sources import DataSource, PipelineView
from lifecycle.data.tables import TableData, load_table

# a source's kind -> its loader; a text source is labelled data or a corpus
LOADERS = {"table": load_table, "image": load_images, "audio": load_audio}
__all__ = ["AudioData", "Corpus", "ImageData", "LabelledData", "TableData", "check_classes", "clean", "describe_files", "load", "load_labelled",
           "read_records", "strip_pos_tags"]


def load(src: DataSource, pipeline: PipelineView) -> LabelledData | Corpus | TableData | ImageData | AudioData:
    seed = pipeline.seed if src.split.seed is None else src.split.seed
    if src.reads in LOADERS:
        return LOADERS[src.reads](src, pipeline, seed)
    if src.labelled:
        data = load_labelled(src, pipeline, seed)
        check_classes(data, src, pipeline)
        return data
    from lifecycle.data.corpus import load_corpus

    return load_corpus(src, pipeline, seed)
