from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nalu_core import (
    ConfigError,
    MnistAdd,
    MnistCount,
    MnistDataError,
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
    build_task,
    load_mnist,
    read_idx,
)
from nalu_core._metrics import converged, late_share
from nalu_core._tasks_mnist import PopulationCNN

EXPECTED = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX written by hand (LeCun's format), independent of the package's writer."""
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _fake_mnist(folder: Path, *, n_train: int = 40, n_test: int = 30, gz: bool = True) -> Path:
    """Digits whose pixels encode their label (value 20 * label), so that contents can be
    decoded from the images: train files gzipped, test files raw."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.repeat(labels[:, None, None] * 20 + 10, 28 * 28).reshape(n, 28, 28)
        for kind, array in (("images-idx3", images.astype(np.uint8)), ("labels-idx1", labels)):
            data = _idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz and prefix == "train":
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def test_read_idx_raw_and_gzipped(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    counts = np.array([7, -1, 70000], dtype=np.int32)
    (tmp_path / "raw").write_bytes(_idx_bytes(images))
    (tmp_path / "zipped.gz").write_bytes(gzip.compress(_idx_bytes(counts)))
    np.testing.assert_array_equal(read_idx(tmp_path / "raw"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped.gz"), counts)


def test_load_mnist_reads_the_four_files(tmp_path: Path) -> None:
    pools = load_mnist(_fake_mnist(tmp_path / "mnist"))
    assert pools.train_images.shape == (40, 28, 28) and pools.test_images.shape == (30, 28, 28)
    assert 0 <= float(pools.train_images.min()) and float(pools.train_images.max()) <= 1
    decoded = (pools.train_images[:, 0, 0] * 255 - 10) / 20
    torch.testing.assert_close(decoded.round().long(), pools.train_labels)


def test_missing_folder_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(MnistDataError) as err:
        load_mnist(tmp_path / "nowhere")
    for name in EXPECTED:
        assert name in str(err.value)
    assert err.value.field == "task.options.mnist_dir"


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = _fake_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MnistDataError, match="missing t10k-labels-idx1-ubyte"):
        load_mnist(folder)
    # the task validates the folder when it is built, before any training
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte") as err:
        build_task(TaskConfig(name="mnist-count", options={"mnist_dir": str(folder)}))
    assert err.value.field == "task.options.mnist_dir"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not an idx file at all", "not an IDX file"),
        (b"", "not an IDX file"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + bytes(100), "needs 3920"),
        (b"\x1f\x8b\x08garbage", "corrupt gzip"),
    ],
)
def test_malformed_file_is_reported(tmp_path: Path, payload: bytes, message: str) -> None:
    folder = _fake_mnist(tmp_path / "mnist")
    (folder / "t10k-images-idx3-ubyte").write_bytes(payload)
    with pytest.raises(MnistDataError, match=message) as err:
        load_mnist(folder)
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    folder = _fake_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(MnistDataError, match="matching the labels"):
        load_mnist(folder)


def _decode(task: MnistCount | MnistAdd, index: torch.Tensor) -> torch.Tensor:
    """The digits shown by the images at ``index``, read from their pixels; -1 for padding."""
    pool = torch.cat([task.data.train_images, task.data.test_images])
    index = index.long()
    digits = ((pool[index.clamp(min=0)][..., 0, 0] * 255 - 10) / 20).round().long()
    return digits.masked_fill(index < 0, -1)


@pytest.mark.parametrize("name", ["mnist-count", "mnist-add"])
def test_targets_match_the_images(tmp_path: Path, name: str) -> None:
    folder = _fake_mnist(tmp_path / "mnist")
    options = {"mnist_dir": str(folder), "length": 7, "min_length": 2}
    task = build_task(TaskConfig(name=name, options=options))
    assert isinstance(task, MnistCount | MnistAdd)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    x, t = task.sample(gens, 40, dtype=torch.float32)
    assert x.shape == (3, 40, 7)
    digits = _decode(task, x)  # (P, B, T), read from the pixels
    lengths = (digits >= 0).sum(-1)
    assert 2 <= int(lengths.min()) and int(lengths.max()) == 7 and len(lengths.unique()) > 1
    # padding comes first, then the digits
    assert torch.all((digits >= 0).long().diff(dim=-1) >= 0)
    if name == "mnist-count":
        expected = torch.stack([(digits == d).sum(-1) for d in range(10)], dim=-1)
        torch.testing.assert_close(t.sum(-1), lengths.float())
    else:
        expected = digits.clamp(min=0).sum(-1, keepdim=True)
    torch.testing.assert_close(t, expected.float())
    sets = task.evaluation_sets(torch.Generator().manual_seed(0), 50, dtype=torch.float32)
    assert {k: v[0].shape[1] for k, v in sets.items()} == {
        "interpolation": 7,
        "extrapolation": 100,
        "extrapolation_1000": 1000,
        "train": 7,
    }
    train_x, _ = sets.pop("train")
    assert int(train_x.max()) < 40  # the training split draws training images
    for x_split, t_split in sets.values():
        assert int(x_split.min()) >= 40  # test sequences use test images only
        decoded = _decode(task, x_split)
        if name == "mnist-add":
            torch.testing.assert_close(t_split, decoded.sum(-1, keepdim=True).float())


def test_sklearn_digits_default_and_split_lengths() -> None:
    task = build_task(
        TaskConfig(name="mnist-count", options={"extrapolation_lengths": "20,30,40"})
    )
    assert isinstance(task, MnistCount)
    assert task.data.source == "sklearn-digits"
    assert len(task.data.train_labels) + len(task.data.test_labels) == 1797
    assert task.split_lengths() == {
        "interpolation": 10,
        "extrapolation": 20,
        "extrapolation_30": 30,
        "extrapolation_40": 40,
    }


def test_population_cnn_replicas_are_independent() -> None:
    cnn = PopulationCNN(10, population=3)
    images = torch.rand(3, 6, 8, 8)
    cnn(images)[1].sum().backward()
    for param in cnn.parameters():
        assert param.grad is not None and torch.all(param.grad[[0, 2]] == 0)
    assert cnn(torch.rand(3, 4, 28, 28)).shape == (3, 4, 10)


def test_shared_encoding_equals_per_replica_encoding() -> None:
    task = build_task(TaskConfig(name="mnist-count"))
    assert isinstance(task, MnistCount)
    model = task.build_model(ModelConfig.stacked("lstm", hidden_size=4), population=2)
    own = torch.tensor([[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9]]])  # replicas draw apart: direct
    shared = torch.stack([own[0], own[0]])  # replicas share: encoded once, looked up
    torch.testing.assert_close(model.encode(own)[0], model.encode(shared)[0])
    long = torch.arange(1200).reshape(1, 1, 1200).expand(2, 1, -1) % 300
    torch.testing.assert_close(model.encode(long)[:, :, 300:600], model.encode(long[:, :, :300]))


def test_counting_accuracy_rounds_counts() -> None:
    task = build_task(TaskConfig(name="mnist-count"))
    assert isinstance(task, MnistCount)
    t = torch.tensor([[1.0] * 10, [2.0] * 10])  # (N=2, 10)
    y = t.expand(2, 2, 10).clone()
    y[1, 0, 0] += 0.7  # one count wrong in replica 1
    metrics = task.split_metrics(y, t)
    assert metrics["accuracy"].tolist() == [1.0, 19 / 20]
    assert metrics["sequence_accuracy"].tolist() == [1.0, 0.5]


def test_padding_is_a_zero_code() -> None:
    task = build_task(TaskConfig(name="mnist-add"))
    assert isinstance(task, MnistAdd)
    model = task.build_model(ModelConfig.stacked("nac_add"), population=2)
    x = torch.tensor([[[5.0, 9.0, 3.0]], [[5.0, 9.0, 3.0]]])  # (P, B, T)
    padded = torch.cat([torch.full((2, 1, 4), -1.0), x], dim=-1)
    # a NAC accumulator has no bias: leading zero codes leave h = 0
    torch.testing.assert_close(model(padded), model(x))


def test_trainer_runs_counting_with_nac_and_lstm_heads(tmp_path: Path) -> None:
    folder = _fake_mnist(tmp_path / "mnist")
    for model in (ModelConfig.stacked("nac_add"), ModelConfig.stacked("lstm", hidden_size=4)):
        options = {"mnist_dir": str(folder), "extrapolation_lengths": [20], "length": 3}
        config = RunConfig(
            task=TaskConfig(name="mnist-count", options=options),
            model=model,
            train=TrainConfig(seeds=2, steps=2, eval_every=2, batch_size=4, eval_samples=20),
        )
        trainer = PopulationTrainer(config)
        (report,) = list(trainer.run())
        assert len(report.extrapolation_mse) == 2


def test_to_config_round_trips() -> None:
    task = build_task(TaskConfig(name="mnist-add", options={"extrapolation_lengths": "50,60"}))
    assert build_task(task.to_config()) == task


def test_addition_mae_and_accuracy_reference_values() -> None:
    task = build_task(TaskConfig(name="mnist-add"))
    assert isinstance(task, MnistAdd)
    t = torch.tensor([[10.0], [20.0], [30.0], [40.0]])  # (N=4, 1)
    y = torch.tensor([[[10.2], [19.6], [31.0], [40.0]], [[0.0], [0.0], [0.0], [0.0]]])
    metrics = task.split_metrics(y, t)
    # replica 0: |errors| 0.2, 0.4, 1.0, 0; rounded outputs right on 3 of 4
    assert metrics["mae"].tolist() == pytest.approx([1.6 / 4, 100 / 4])
    assert metrics["mse"].tolist() == pytest.approx([(0.04 + 0.16 + 1.0) / 4, 3000 / 4])
    assert metrics["accuracy"].tolist() == [0.75, 0.0]
    assert "sequence_accuracy" not in metrics


def test_train_split_is_the_training_distribution() -> None:
    task = build_task(TaskConfig(name="mnist-count", options={"length": 6, "min_length": 2}))
    assert isinstance(task, MnistCount)
    sets = task.evaluation_sets(torch.Generator().manual_seed(0), 50, dtype=torch.float32)
    x, t = sets["train"]
    assert x.shape == (50, 6)
    assert int(x.max()) < len(task.data.train_labels)  # training images only
    lengths = (x >= 0).sum(-1)
    assert int(lengths.min()) >= 2 and int(lengths.max()) <= 6
    torch.testing.assert_close(t.sum(-1), lengths.float())  # counts add up to the length
    index = x.long()
    labels = task.data.train_labels[index.clamp(min=0)].masked_fill(index < 0, -1)
    expected = torch.stack([(labels == d).sum(-1) for d in range(10)], dim=-1)
    torch.testing.assert_close(t, expected.float())


def test_trainer_reports_mnist_metrics_at_every_length_and_convergence() -> None:
    config = RunConfig(
        task=TaskConfig(
            name="mnist-count", options={"extrapolation_lengths": [20, 40], "eval_sequences": 12}
        ),
        model=ModelConfig.stacked("nac_add"),
        train=TrainConfig(seeds=2, steps=8, eval_every=2, batch_size=4, device="cpu"),
    )
    trainer = PopulationTrainer(config)
    reports = list(trainer.run())
    assert all("train_mse_median" in r.metrics() for r in reports)
    metrics = trainer.result().metrics()
    for split in ("interpolation", "extrapolation", "extrapolation_40", "train"):
        for name in ("mae", "accuracy", "sequence_accuracy"):
            assert 0 <= metrics[f"{split}_{name}_median"] < math.inf
            assert 0 <= metrics[f"{split}_{name}_best"] < math.inf
    assert metrics["extrapolation_40_mse_median"] > 0
    curve = [r.metrics()["train_mse_median"] for r in reports]
    assert metrics["train_mse_late_share"] == pytest.approx(late_share(curve))
    assert metrics["converged"] == float(converged(curve))
