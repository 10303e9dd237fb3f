"""The small runtime shared by the edge bundle, the BentoML service and the export/quantize/serve
stages: onnxruntime + tokenizers + numpy (+ Pillow for images) and the standard library, nothing else.
This package imports nothing from the rest of `lifecycle` and its modules import each other relatively,
so the `edge/` folder can be copied alone onto a device and imported as `edge`.

    from lifecycle.edge import Predictor
    p = Predictor.open("model.zip")          # or an export/quantize artifact directory
    p.predict(["some text"])                 # [{"label": ..., "score": ..., "scores": {...}}]
    p.embed(["some text"])                   # an embedding model: (n, dim) array
    p.predict_rows([{"island": "Dream", "body_mass_g": None}])  # a table model, from raw rows (also
                                             # regress_rows, score_rows); missing values as None
    p.classify_images([png_bytes, uint8_array])  # an image classifier: encoded PNG/JPEG or pixels
    p.embed_images([png_bytes, uint8_array])     # an image embedder: (n, dim) float32, normalised in the graph
    p.answer([wav_bytes, float32_waveform])      # a spoken-word classifier: WAV/FLAC or samples at its rate
    p.generate(["a prompt"])                 # a decoder: [{"text", "tokens", "finish_reason"}] (also stream)
    p.answers(["some text"])                 # whichever of those the model's task declares, as JSON
    p.answer([...])                          # the answer by the model's answers kind (a plug-in kind's too)
    p.check()                                # re-runs the predictions the pipeline recorded

A directory or zip holds model.onnx, tokenizer.json (preprocessing.json for a table model,
preprocessor_config.json for an image model: schema.json names it, or null), labels.json and schema.json. When it holds
manifest.json (a bundle always does), every file's sha256 is checked before anything is loaded and
files the manifest does not list are refused. ONNX external data is accepted only when every location
is a plain relative path to a regular file inside the bundle: no absolute paths, no `..`, no symlinks.
With `trusted_keys=` (public Ed25519 PEM files), open() also requires manifest.sig, a signature over
manifest.json by one of those keys (lifecycle.signing writes it; `cryptography` is imported only then).

One module per job:
    predictor     Predictor: opening, the onnxruntime session, batching, check()
    kinds         the inputs kinds (INPUTS: text, prompts, rows, images) and answers kinds, and those an
                  installed package adds through entry points (lifecycle.edge.inputs, lifecycle.edge.answers)
    answers       each task's kinds when schema.json does not name them (KINDS), each answers kind's answer (ANSWERS)
    decoding      generation with a KV cache: sampling, stop strings, streaming, perplexity
    text_inputs   texts -> feeds: the tokenizer, padding
    table_inputs  rows -> feeds: TablePreprocessing, RowError
    image_inputs  images -> pixel_values: bounded decoding, ImagePreprocessing, ImageError
    audio_decoding  WAV/FLAC bytes -> mono float32 waves: bounded decoding (header first), resample, AudioError
    audio_inputs  clips -> input_values: log-mel features (AudioPreprocessing), as transformers' AST extractor
    requests      the checks of a served request's JSON payload (texts, rows, prompts, images, audio), no server needed
    bundle        the files a bundle holds, BundleError, manifest reading, hash verification
    signature     manifest.sig verification with trusted Ed25519 keys
    extraction    bundle zips: safe extraction under size limits, the manifest read in place
    onnx_graph    model.onnx read without `onnx`: external-data locations, op types
    cpu           the CPU's ISA flags and the int8 VNNI warning
"""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported

from .audio_decoding import (  # noqa: E402
    AUDIO_FORMATS,
    MAX_AUDIO_SECONDS,
    MAX_CHANNELS,
    SAMPLE_RATES,
    AudioError,
    decode_audio,
    open_audio,
    resample,
)
from .audio_inputs import FEATURE_EXTRACTOR, AudioInputs, AudioPreprocessing, wav_bytes  # noqa: E402
from .bundle import (  # noqa: E402
    BUNDLE_REFUSED,
    LABELS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MODEL,
    REQUIRED,
    SCHEMA,
    SIGNATURE,
    TOKENIZER,
    BundleError,
    preprocessor_file,
    read_manifest,
    required_files,
    verify,
)
from .cpu import VNNI_FLAGS, cpu_flags, int8_isa_warning  # noqa: E402
from .decoding import PromptTooLong  # noqa: E402
from .extraction import (  # noqa: E402
    EXTRACT_PREFIX,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    RATIO_FROM_BYTES,
    zip_manifest,
)
from .image_inputs import (  # noqa: E402
    CONVERTIBLE_MODES,
    IMAGE_FORMATS,
    IMAGE_PROCESSOR,
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    ImageError,
    ImagePreprocessing,
    check_request_pixels,
    decode_image,
    load_image,
    open_image,
    to_mode,
)
from .onnx_graph import check_external_data, external_data_locations, op_types  # noqa: E402
from .predictor import BATCH_DEPENDENT_OPS, Predictor  # noqa: E402
from .signature import check_signature, key_id  # noqa: E402
from .table_inputs import MISSING_ID, PREPROCESSING, UNKNOWN_ID, RowError, TablePreprocessing  # noqa: E402

__all__ = [
    "AUDIO_FORMATS", "MAX_AUDIO_SECONDS", "MAX_CHANNELS", "SAMPLE_RATES", "AudioError", "decode_audio", "open_audio", "resample",
    "FEATURE_EXTRACTOR", "AudioInputs", "AudioPreprocessing", "wav_bytes",
    "BATCH_DEPENDENT_OPS", "BUNDLE_REFUSED", "CONVERTIBLE_MODES", "EXTRACT_PREFIX", "IMAGE_FORMATS",
    "IMAGE_PROCESSOR", "LABELS", "MANIFEST", "MAX_IMAGE_PIXELS", "MAX_MANIFEST_BYTES", "MAX_MEMBER_BYTES",
    "MAX_MEMBERS", "MAX_RATIO", "MAX_REQUEST_PIXELS", "MAX_TOTAL_BYTES", "MISSING_ID", "MODEL", "PREPROCESSING",
    "RATIO_FROM_BYTES", "REQUIRED", "SCHEMA", "SIGNATURE", "TOKENIZER", "UNKNOWN_ID", "VNNI_FLAGS", "BundleError",
    "ImageError", "ImagePreprocessing", "Predictor", "PromptTooLong", "RowError", "TablePreprocessing",
    "check_external_data", "check_request_pixels", "check_signature", "cpu_flags", "decode_image",
    "external_data_locations", "int8_isa_warning", "key_id", "load_image", "op_types", "open_image",
    "preprocessor_file", "read_manifest", "required_files", "to_mode", "verify", "zip_manifest",
]
