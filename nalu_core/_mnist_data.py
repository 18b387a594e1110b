"""Digit images for the MNIST tasks: an IDX reader and the scikit-learn 8x8 default.

Real MNIST is read from four IDX files (raw or gzipped) in a local folder; nothing is
downloaded. Without a folder, scikit-learn's bundled 8x8 digits (1797 images) are used, split
into a seeded 80/20 train/test pool so that test sequences never reuse a training image.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nalu_core._errors import ConfigError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type byte -> big-endian numpy dtype (LeCun's format description)
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_FIELD = "task.options.mnist_dir"


class MnistDataError(ConfigError):
    """The MNIST folder or one of its IDX files is missing or malformed."""


def _expected_files() -> str:
    return ", ".join(f"{name}[.gz]" for name in MNIST_FILES.values())


def read_idx(path: str | Path) -> np.ndarray[Any, np.dtype[Any]]:
    """An IDX file (raw or gzip, detected from its magic bytes) as a numpy array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise MnistDataError(f"{path}: corrupt gzip stream ({err})", field=_FIELD) from err
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise MnistDataError(
            f"{path}: not an IDX file (bad magic {raw[:4].hex() or 'empty'}); "
            f"expected {_expected_files()}",
            field=_FIELD,
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise MnistDataError(f"{path}: truncated IDX header ({ndim=})", field=_FIELD)
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != size:
        raise MnistDataError(
            f"{path}: IDX data holds {len(raw) - header} bytes, header {shape=} needs {size}",
            field=_FIELD,
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


@dataclass(frozen=True)
class DigitPools:
    """Train and test images (N, H, W) in [0, 1] with labels (N,) int64."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.train_images.shape[1]), int(self.train_images.shape[2]))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise MnistDataError(
        f"{folder}: missing {stem}[.gz]; an MNIST folder must hold {_expected_files()}",
        field=_FIELD,
    )


def load_mnist(folder: str | Path) -> DigitPools:
    """The four MNIST IDX files of ``folder`` (raw or ``.gz``), checked for consistent shapes."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MnistDataError(
            f"mnist_dir {str(folder)!r} is not a folder; it must hold {_expected_files()}",
            field=_FIELD,
        )
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        stem = MNIST_FILES[f"{split}_images"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise MnistDataError(
                f"{folder}: {stem} must be (N, H, W) with N matching the labels; "
                f"got images {images.shape} and labels {labels.shape}",
                field=_FIELD,
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise MnistDataError(
                f"{folder}: {MNIST_FILES[f'{split}_labels']} has labels outside 0..9",
                field=_FIELD,
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise MnistDataError(f"{folder}: train and test images differ in size", field=_FIELD)

    def to_images(key: str) -> Tensor:
        data = torch.from_numpy(arrays[key].astype(np.float32))
        # MNIST's bytes are intensities 0..255; other types are scaled by their peak
        scale = 255.0 if arrays[key].dtype == np.uint8 else max(float(data.abs().max()), 1.0)
        return data / scale

    def to_labels(key: str) -> Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    return DigitPools(
        to_images("train_images"),
        to_labels("train_labels"),
        to_images("test_images"),
        to_labels("test_labels"),
        source=f"mnist:{folder}",
    )


def load_sklearn_digits(*, seed: int = 0, test_fraction: float = 0.2) -> DigitPools:
    """scikit-learn's bundled 8x8 digits (values 0..16 scaled to [0, 1]), seeded split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)) / 16.0  # (1797, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return DigitPools(
        images[train], labels[train], images[test], labels[test], source="sklearn-digits"
    )


def load_digit_pools(mnist_dir: str | None, *, seed: int = 0) -> DigitPools:
    return load_sklearn_digits(seed=seed) if mnist_dir is None else load_mnist(mnist_dir)


def write_idx(
    path: str | Path, array: np.ndarray[Any, np.dtype[Any]], *, compress: bool = False
) -> None:
    """Writes ``array`` as IDX (used by the tests and to convert other digit sets)."""
    codes = {v.newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder("=")
    if dtype not in codes:
        raise ValueError(f"no IDX type for {array.dtype=}")
    header = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
