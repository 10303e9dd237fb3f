"""Images: a folder of PNG/JPEG files, one sub-directory per class, or scikit-learn's bundled digits;
decoded with Pillow (lifecycle.edge.decode_image), exact duplicates dropped before a stratified split fixed
by the seed, and the preprocessing (a transformers image-processor config) fitted on the training split.

    data:
      digits: {format: sklearn-digits}                 # 1,797 real 8x8 grey digits, no download
      mine: {format: imagefolder, path: photos/, image: {size: 32, mode: RGB}}   # photos/<class>/*.png

An unreadable file (corrupt, truncated, not an image) is counted and named in the stats, not a crash; so
is a file of another extension. `label_field: null` reads every image under `path` unlabelled (for
pre-training). Images keep their own size in the splits (uint8 arrays in the model's mode); the
preprocessing resizes them, the same way in training, the edge runtime and the service.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from lifecycle import LifecycleError
from lifecycle.data.splits import check_scored_classes, split_off
from lifecycle.schema import Strict

if TYPE_CHECKING:
    import numpy as np

# `src` below is a lifecycle.data.sources.DataSource and `pipeline` a PipelineView, left unannotated: the
# sources module imports this one (for its spec and formats), and this one must not import it back.

IMAGE_FORMATS = ("imagefolder", "sklearn-digits")
IMAGE_PACKAGED = {"sklearn-digits": "scikit-learn"}  # formats whose images ship in a package
EXTENSIONS = (".png", ".jpg", ".jpeg")
SHOWN = 20  # unreadable files named in the stats (all are counted)


class Augment(Strict):
    """Training-only augmentation (lifecycle.workloads.images.model), drawn afresh for every image at every epoch;
    evaluation, the edge runtime and the service never augment."""

    # Random resized crop: a box of this share of the area and aspect in [3/4, 4/3], resized back.
    # (1.0, 1.0): off. Small images lose detail fast: 8x8 digits keep (0.85, 1.0) at most.
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (1.0, 1.0)
    flip: bool = False  # horizontal flips: fine for photos, wrong for digits and text
    brightness: float = Field(0.0, ge=0, lt=1)  # colour jitter: factor drawn from [1 - b, 1 + b]
    contrast: float = Field(0.0, ge=0, lt=1)
    translate: int = Field(0, ge=0)  # random shift by up to this many pixels (edges filled with black)

    @field_validator("crop_scale")
    @classmethod
    def _ordered(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if scale[0] > scale[1]:
            raise ValueError(f"{list(scale)}: give (smallest, largest) share of the area")
        return scale

    @property
    def off(self) -> bool:
        return self.crop_scale == (1.0, 1.0) and not (self.flip or self.brightness or self.contrast or self.translate)


class ImageSpec(Strict):
    """How a source's images are read (`image:` of an image source)."""

    size: int | None = Field(None, gt=0, description="side the model sees, in pixels; None: the most common side")
    mode: Literal["L", "RGB"] | None = None  # None: "L" when every image is grey, else "RGB"
    resample: Literal["nearest", "bilinear", "bicubic"] = "bilinear"  # how images of another size are resized
    augment: Augment = Augment()


RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # Pillow's enum values, as transformers stores them


@dataclass
class ImageSplit:
    images: list[np.ndarray]  # uint8 (H, W) or (H, W, 3), in the model's mode, at their own size
    labels: list[str]
    names: list[str]  # where each image came from (a file, or digits[i])

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class ImageData:
    splits: dict[str, ImageSplit]
    labels: list[str]  # class names (id -> name); [] for an unlabelled source
    preprocessing: dict  # a ViTImageProcessor config (lifecycle.edge.ImagePreprocessing reads it)
    spec: ImageSpec
    stats: dict = field(default_factory=dict)

    def pixel_values(self, split: str):
        """The split's `pixel_values` (n, C, H, W) float32, through the one transform."""
        from lifecycle.edge import ImagePreprocessing

        return ImagePreprocessing(self.preprocessing).transform(self.splits[split].images)

    def target(self, split: str):
        import numpy as np

        index = {name: i for i, name in enumerate(self.labels)}
        return np.array([index.get(v, -1) for v in self.splits[split].labels], dtype=np.int64)

    def read_through(self, preprocessing: dict, where) -> ImageData:
        """These images read through another model's preprocessing (a pre-trained model's), which must
        take images of the same mode."""
        import dataclasses

        if len(preprocessing["image_mean"]) != len(self.preprocessing["image_mean"]):
            raise LifecycleError(f"{where}: the model reads {len(preprocessing['image_mean'])}-channel images, these "
                                 f"are {len(self.preprocessing['image_mean'])}-channel; set `image.mode` to match")
        return dataclasses.replace(self, preprocessing=preprocessing)


# ------------------------------------------------------------------------------------------- reading
def read_digits():
    """scikit-learn's digits as uint8 grey images (values 0..16 scaled to 0..255: ink is bright)."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    return list(pixels), [str(t) for t in digits.target], [f"digits[{i}]" for i in range(len(pixels))], {}


def read_folder(root: Path, labelled: bool):
    """Every PNG/JPEG under root (class = first sub-directory when labelled), sorted by path, decoded;
    the unreadable ones counted and named. Returns (PIL images, labels, names, stats)."""
    from lifecycle.edge import ImageError, decode_image

    if not root.is_dir():
        raise LifecycleError(f"{root}: an imagefolder source's path is a directory (one sub-directory per class)")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    images, labels, names, unreadable, other = [], [], [], [], 0
    for f in files:
        rel = f.relative_to(root)
        if f.suffix.lower() not in EXTENSIONS:
            other += 1
            continue
        if labelled and len(rel.parts) < 2:
            other += 1  # a file beside the class folders has no class
            continue
        try:
            im = decode_image(f.read_bytes())
        except (ImageError, OSError) as exc:
            unreadable.append(f"{rel}: {exc}")
            continue
        images.append(im)
        labels.append(rel.parts[0] if labelled else "")
        names.append(str(rel))
    stats = {"unreadable": len(unreadable), "unreadable_files": unreadable[:SHOWN], "other_files": other}
    return images, labels, names, stats


def load_images(src, pipeline, seed: int) -> ImageData:
    """Read, convert to one mode, drop exact duplicates, split (stratified by class), fit preprocessing."""
    import numpy as np

    from lifecycle.edge import to_mode

    spec = src.image or ImageSpec()
    labelled = src.label_field is not None
    if src.format == "sklearn-digits":
        pixels, labels, names, stats = read_digits()
        mode = spec.mode or "L"
        if mode == "RGB":
            pixels = [np.repeat(p[..., None], 3, axis=2) for p in pixels]
        where = "sklearn digits"
    else:
        root = src.files(pipeline)[0]
        images, labels, names, stats = read_folder(root, labelled)
        where = str(root)
        if not images:
            raise LifecycleError(f"{where}: no readable PNG/JPEG image ({stats['unreadable']} unreadable, "
                                 f"{stats['other_files']} other files); classes are sub-directories of `path`")
        grey = all(im.mode in ("1", "L", "LA") or (im.mode == "P" and _grey_palette(im)) for im in images)
        mode = spec.mode or ("L" if grey else "RGB")
        pixels = [np.asarray(to_mode(im, mode), dtype=np.uint8) for im in images]
    if not labelled:
        labels = [""] * len(pixels)

    keep, seen, conflicts = [], {}, 0
    for i, p in enumerate(pixels):  # exact duplicates (same pixels after mode conversion): the first stays
        key = hashlib.sha256(p.tobytes() + str(p.shape).encode()).hexdigest()
        if key in seen:
            conflicts += labels[seen[key]] != labels[i]
            continue
        seen[key] = i
        keep.append(i)
    stats.update(images=len(pixels), duplicates_dropped=len(pixels) - len(keep), duplicate_label_conflicts=conflicts)
    pixels, labels, names = [pixels[i] for i in keep], [labels[i] for i in keep], [names[i] for i in keep]
    if len(pixels) < 10:
        raise LifecycleError(f"{where}: {len(pixels)} distinct images; an image task needs at least 10")

    order = np.arange(len(pixels))
    strat = np.array(labels) if labelled and src.split.stratify else None
    rest, test = split_off(order, src.split.test, seed, strat)
    frac = src.split.validation / max(1e-9, 1 - src.split.test)
    train, val = split_off(rest, frac, seed, None if strat is None else strat[rest])
    splits = {}
    for name, idx in (("train", train), ("validation", val), ("test", test)):
        idx = idx[: src.limit] if src.limit else idx
        if not len(idx):
            raise LifecycleError(f"{where}: the {name} split is empty; lower split fractions or add images")
        splits[name] = ImageSplit([pixels[i] for i in idx], [labels[i] for i in idx], [names[i] for i in idx])
    classes = sorted(set(splits["train"].labels)) if labelled else []
    if labelled and len(classes) < 2:
        raise LifecycleError(f"{where}: the train split has one class; a classifier needs two (class = sub-directory)")
    if labelled:
        check_scored_classes(where, {name: part.labels for name, part in splits.items()})
    stats.update({f"{k}_images": len(v) for k, v in splits.items()}, mode=mode)
    return ImageData(splits, classes, fit_preprocessing(splits["train"].images, spec, mode), spec, stats)


def fit_preprocessing(train: list, spec: ImageSpec, mode: str) -> dict:
    """A ViTImageProcessor config: resize to `spec.size` (None: the most common training side, the longer
    side when images are not square), rescale to [0, 1], normalise by the training pixels' mean and std
    per channel."""
    import collections

    import numpy as np

    size = spec.size or collections.Counter(max(p.shape[:2]) for p in train).most_common(1)[0][0]
    x = np.concatenate([p.reshape(-1, 1 if mode == "L" else 3) for p in train]).astype(np.float64) / 255
    std = x.std(0)
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
            "resample": RESAMPLE[spec.resample], "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [float(v) for v in x.mean(0)], "image_std": [float(v) if v > 1e-6 else 1.0 for v in std]}


def _grey_palette(im) -> bool:
    palette = im.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def package_version(fmt: str) -> str | None:
    import importlib.metadata

    return importlib.metadata.version(IMAGE_PACKAGED[fmt]) if fmt in IMAGE_PACKAGED else None
