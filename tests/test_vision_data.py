"""Vision data: image folders (corrupt files skipped and counted, clear errors), arrays, splits, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="the vision extra (pillow) is not installed")

from hp_rl.vision.data import (
    AugmentConfig,
    DataError,
    ImageDataset,
    few_labels,
    from_arrays,
    load_data,
    load_image_folder,
    load_npz,
    make_loader,
    reserved_split,
    stratified_split,
)


def write_folder(root: Path, classes: dict[str, int], size: int = 10, mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            pixels = rng.integers(0, 100, shape) + 100 * index
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode=mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_with_a_corrupt_image_skipped_and_counted(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", {"cat": 3, "dog": 4})
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (root / "dog" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="2 file"):
        data = load_image_folder(root)
    assert data.classes == ("cat", "dog")
    assert len(data) == 7 and data.class_counts().tolist() == [3, 4]
    assert len(data.skipped) == 2 and any("broken.png" in s for s in data.skipped)
    assert data.images.dtype == np.uint8 and data.image_shape == (1, 10, 10)


def test_image_folder_resizes_and_promotes_to_rgb(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "grey", {"a": 2}, size=10)
    write_folder(root, {"b": 2}, size=14, mode="RGB")
    data = load_image_folder(root, image_size=12)
    assert data.image_shape == (3, 12, 12)
    grey = data.images[data.labels == 0]
    assert (grey[:, 0] == grey[:, 1]).all()  # grey images repeated over the three channels


def test_one_class_is_an_error(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match=r"Only one class \('only'\).*at least two"):
        load_image_folder(root)


def test_no_images_and_missing_class_folders_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="No images"):
        load_image_folder(tmp_path / "empty")
    flat = tmp_path / "flat"
    write_folder(tmp_path / "tmp", {"x": 1})
    flat.mkdir()
    (tmp_path / "tmp" / "x" / "0.png").rename(flat / "0.png")
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(flat)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    with pytest.raises(DataError, match="neither an image folder"):
        load_data(tmp_path / "file.csv")


def test_arrays_npz_and_builtin(tmp_path: Path) -> None:
    channels_last = np.random.default_rng(0).random((6, 5, 5, 3))  # floats in [0, 1]
    data = from_arrays(channels_last, ["b", "a", "b", "a", "c", "c"])
    assert data.image_shape == (3, 5, 5) and data.classes == ("a", "b", "c")
    assert data.images.max() > 1 and data.labels.tolist() == [1, 0, 1, 0, 2, 2]
    with pytest.raises(DataError, match="at least two"):
        from_arrays(np.zeros((3, 4, 4)), [1, 1, 1])
    path = tmp_path / "digits.npz"
    np.savez(path, x=np.zeros((4, 6, 6), dtype=np.uint8), y=np.array([0, 1, 0, 1]))
    assert load_npz(path).image_shape == (1, 6, 6)
    pytest.importorskip("sklearn", reason="scikit-learn (vision extra) is not installed")
    digits = load_data("sklearn-digits")
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10 and len(digits) == 1797


def test_splits_are_stratified_disjoint_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), [10, 10, 3, 2])
    train, val = stratified_split(labels, 0.3, seed=1)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    assert all((labels[val] == c).sum() >= 1 and (labels[train] == c).sum() >= 1 for c in range(4))
    again = stratified_split(labels, 0.3, seed=1)
    assert (again[0] == train).all()
    chosen = few_labels(labels, 1, seed=0, pool=train)
    assert set(chosen) <= set(train) and np.bincount(labels[chosen]).tolist() == [1, 1, 1, 1]
    source, target = reserved_split(labels, 0.5, seed=3)
    assert not set(source) & set(target) and len(source) + len(target) == len(labels)


def test_dataset_loader_and_augmentation() -> None:
    data = from_arrays(np.full((8, 1, 6, 6), 128, dtype=np.uint8), [0, 1] * 4)
    augment = AugmentConfig(shift=1, rotate=10.0, scale=0.1, hflip=True, brightness=0.1, contrast=0.1)
    loader = make_loader(ImageDataset(data, augment), batch_size=4, shuffle=True, seed=0)
    images, labels = next(iter(loader))
    assert images.shape == (4, 1, 6, 6) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    plain = ImageDataset(data)[0][0]
    torch.testing.assert_close(plain, torch.full((1, 6, 6), 128 / 255))
    with pytest.raises(DataError, match="Unknown augmentation"):
        AugmentConfig.from_dict({"flip": True})
