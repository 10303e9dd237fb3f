"""Images -> an image graph's `pixel_values`: decoding (bounded, header first) and one transform, used by
training (lifecycle.workloads.images.model), the stages' evaluation, the edge runtime and the service, so the same pixels
give the same tensor everywhere. Its parameters are a transformers image-processor config
(ViTImageProcessor's preprocessor_config.json: resize to `size` with `resample`, rescale, normalise by
`image_mean` / `image_std`), and the arithmetic is transformers' own (rescale in float64 then float32,
normalise in float32), so ViTImageProcessor.from_pretrained(dir) gives the same tensor too (tested); here it
needs only numpy and Pillow. Decoding checks the pixel count from the header before any pixel is decoded.
ImageInputs is the inputs kind "images"."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

IMAGE_PROCESSOR = "preprocessor_config.json"
IMAGE_FORMATS = ("PNG", "JPEG")  # what decode_image accepts unless told otherwise
MAX_IMAGE_PIXELS = 4096 * 4096  # decode_image's default limit (width x height, from the header)
MAX_REQUEST_PIXELS = 2 * MAX_IMAGE_PIXELS  # the service's default pixel budget per request (check_request_pixels)
# Modes converted to the model's ("L" or "RGB"); others (16-bit "I;16", float "F") would be rescaled
# wrongly by a plain conversion and are refused.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"})


class ImageError(ValueError):
    """Bytes that are not an image the model takes: `status` is the HTTP status a service answers with
    (413: too many pixels, 415: not an allowed format or mode, 422: recognised but undecodable)."""

    def __init__(self, reason: str, status: int = 422):
        super().__init__(reason)
        self.reason, self.status = reason, status


def open_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS, formats=IMAGE_FORMATS):
    """Encoded bytes -> a PIL image whose header only is read: its format, mode and size are checked and
    nothing is decompressed yet (a small PNG can declare 100k x 100k pixels). load_image decodes it."""
    import io

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        try:
            im = Image.open(io.BytesIO(bytes(data)), formats=list(formats))
        except Image.DecompressionBombError as exc:  # Pillow's own ceiling (2 x its MAX_IMAGE_PIXELS)
            raise ImageError(f"too many pixels ({exc})", 413) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            raise ImageError(f"not a {' or '.join(formats)} image", 415) from None
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{width}x{height} is {width * height} pixels; the limit is {max_pixels}", 413)
    if im.mode not in CONVERTIBLE_MODES:
        raise ImageError(f"{im.format} mode {im.mode} is not supported (8-bit grey, palette, RGB or RGBA)", 415)
    return im


def load_image(im):
    """An image from open_image, decoded whole: a truncated or corrupt file fails here, not inside a model call."""
    try:
        im.load()
    # A decoder fed hostile bytes can raise nearly anything (OSError for a truncated file, SyntaxError,
    # ValueError, zlib and struct errors); every one means the same to the caller.
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{im.format} image could not be decoded (truncated or corrupt: {str(exc)[:120]})",
                         422) from None
    return im


def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS, formats=IMAGE_FORMATS):
    """Encoded bytes -> a decoded PIL image: open_image's checks, then load_image."""
    return load_image(open_image(data, max_pixels, formats))


def check_request_pixels(images: list, budget: int) -> None:
    """The images of one request (opened, not decoded) against its pixel budget: decoding costs about
    the pixels it produces, so the sum of width x height is what bounds a request's decoding work
    (63 black 4096x4096 PNGs fit in 1 MB and took 3.7 s of CPU to decode)."""
    total = sum(im.size[0] * im.size[1] for im in images)
    if total > budget:
        raise ImageError(f"the images hold {total} pixels (width x height, summed); the limit is {budget} "
                         "per request (max_request_pixels): send fewer or smaller images per request", 413)


def to_mode(im, mode: str):
    """A PIL image in `mode` ("L" or "RGB"). Transparent pixels are composited over black first (a plain
    convert would keep the colour under a fully transparent pixel)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    return im if im.mode == mode else im.convert(mode)


class ImagePreprocessing:
    """Images -> `pixel_values` (n, channels, height, width) float32, by a transformers image-processor
    config: convert to the model's mode (1 channel: "L", 3: "RGB"), resize to `size` (Pillow, `resample`),
    x * rescale_factor (float64, then float32), (x - mean) / std (float32). Inputs are encoded bytes
    (decode_image: PNG or JPEG, at most MAX_IMAGE_PIXELS), PIL images or uint8 arrays (H, W) / (H, W, C)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.height, self.width = spec["size"]["height"], spec["size"]["width"]
        channels = len(spec["image_mean"])
        if channels not in (1, 3):
            raise ValueError(f"{IMAGE_PROCESSOR}: image_mean has {channels} values; images have 1 or 3 channels")
        self.mode = "L" if channels == 1 else "RGB"
        self.mean = np.array(spec["image_mean"], dtype=np.float32)
        self.std = np.array(spec["image_std"], dtype=np.float32)

    @classmethod
    def load(cls, path: Path) -> ImagePreprocessing:
        return cls(json.loads(Path(path).read_text()))

    def blank(self) -> np.ndarray:
        shape = (self.height, self.width) if self.mode == "L" else (self.height, self.width, 3)
        return np.zeros(shape, dtype=np.uint8)

    def pixels(self, image) -> np.ndarray:
        """One image as uint8 (H, W) or (H, W, 3) in the model's mode and size: what is normalised."""
        from PIL import Image

        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise ImageError(f"expected uint8 pixels (H, W) or (H, W, 1|3|4), got {image.dtype} {image.shape}")
            image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        elif not isinstance(image, Image.Image):
            raise ImageError(f"expected image bytes, a PIL image or uint8 pixels, got {type(image).__name__}")
        image = to_mode(image, self.mode)
        if self.spec.get("do_resize", True) and image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), resample=self.spec.get("resample", 2))
        return np.asarray(image, dtype=np.uint8)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W[, C]) -> float32 (n, C, H, W), as transformers' rescale and normalize compute it."""
        x = pixels if pixels.ndim == 4 else pixels[..., None]
        if self.spec.get("do_rescale", True):
            x = (x.astype(np.float64) * self.spec.get("rescale_factor", 1 / 255)).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.spec.get("do_normalize", True):
            x = (x - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def transform(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self.mean), self.height, self.width), dtype=np.float32)
        return self.normalise(np.stack([self.pixels(im) for im in images]))


class ImageInputs:
    """Inputs kind "images": encoded PNG/JPEG bytes, PIL images or uint8 pixels through the model's
    preprocessor_config.json. Every image is resized to one size (max_length 0), so any images share a call."""

    max_length = 0

    def __init__(self, root: Path, schema: dict):
        self.image = ImagePreprocessing.load(Path(root) / IMAGE_PROCESSOR)

    def sample(self) -> np.ndarray:
        return self.image.blank()  # black

    def recorded(self, entry: dict) -> bytes:
        import base64

        return base64.b64decode(entry["image"], validate=True)  # recorded as base64 PNG

    def feeds(self, predictor, images: list, pad_to: int | None = None) -> dict[str, np.ndarray]:
        return {"pixel_values": self.image.transform(list(images))}  # resized, so pad_to does not apply

    def outputs(self, predictor, images: list, batch_size: int) -> np.ndarray:
        return predictor.run_batched("pixel_values", self.image.transform(list(images)), batch_size)
