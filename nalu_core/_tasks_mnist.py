"""MNIST digit counting and digit addition (Trask et al. 2018, §4.3, Table 2).

The input is a sequence of digit images; ``mnist-count`` predicts how many of each class
appear (10 outputs), ``mnist-add`` the sum of the digits (1 output). Models train at
``length`` 10 and are tested at 100 and 1000 (``extrapolation_lengths``). Training sequences
have a length drawn uniformly from ``min_length..length`` (default 1..10: length-1 sequences
give the CNN a classification-strength signal; ``min_length=10`` is Trask's fixed length).
The model is a small population CNN applied to every image, then a
:class:`~nalu_core._recurrent.RecurrentHead` (NAC/NALU/linear accumulating recurrence, or an
LSTM/GRU/RNN cell with a linear readout).

Sequences are passed around as *indices* into the image pool (train images, then test images),
stored as floats so that the trainer's dtype handling leaves them alone; the model holds the
pool as a non-persistent buffer and encodes each distinct image once per forward pass, so
evaluating 100 sequences of 1000 digits costs one pass over the test pool, not 100,000 images.

Data: scikit-learn's bundled 8x8 digits by default (seeded 80/20 train/test split), or real
MNIST IDX files with ``mnist_dir`` (see :mod:`nalu_core._mnist_data`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nalu_core._config import ModelConfig
from nalu_core._errors import ConfigError
from nalu_core._mnist_data import (
    MNIST_FILES,
    DigitPools,
    MnistDataError,
    _find,
    load_digit_pools,
)
from nalu_core._recurrent import RecurrentHead
from nalu_core._tasks import PopulationModule, TaskSpec, register_task
from nalu_core._tasks_sequence import SequenceTask, check_int, regression_metrics
from nalu_core._units import Generators, _fill_

_F = "task.options."
CodeActivation = Literal["softmax", "none"]
# images encoded per evaluation split: sequences x length (the pool encoding is shared)
_EVAL_IMAGES = 200_000


class PopulationCNN(nn.Module):
    """P replicas of conv3x3-relu-maxpool-conv3x3-relu-avgpool(2x2)-linear.

    Forward: images (P, N, H, W) -> codes (P, N, out).
    Replicas are the groups of grouped convolutions, so all P CNNs run as one conv call.
    The adaptive pool makes the same network read 8x8 digits and 28x28 MNIST.
    """

    def __init__(
        self,
        out_features: int,
        *,
        population: int,
        channels: tuple[int, int] = (8, 16),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.population, self.channels, self.out_features = population, channels, out_features
        self.conv1_w = nn.Parameter(torch.empty(population, c1, 1, 3, 3, **kw))
        self.conv1_b = nn.Parameter(torch.empty(population, c1, **kw))
        self.conv2_w = nn.Parameter(torch.empty(population, c2, c1, 3, 3, **kw))
        self.conv2_b = nn.Parameter(torch.empty(population, c2, **kw))
        self.fc_w = nn.Parameter(torch.empty(population, 4 * c2, out_features, **kw))
        self.fc_b = nn.Parameter(torch.empty(population, 1, out_features, **kw))
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        # He-uniform weights for the ReLU layers; torch's default for the output layer
        for w, b, fan_in, gain in (
            (self.conv1_w, self.conv1_b, 9, 6.0),
            (self.conv2_w, self.conv2_b, 9 * self.channels[0], 6.0),
            (self.fc_w, self.fc_b, 4 * self.channels[1], 1.0),
        ):
            bound = math.sqrt(gain / fan_in)
            _fill_(w, generators, "uniform", -bound, bound)
            _fill_(b, generators, "uniform", -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, images: Tensor) -> Tensor:
        P, N, H, W = images.shape
        c1, c2 = self.channels
        x = images.transpose(0, 1).contiguous()  # (N, P, H, W): replicas as channel groups
        x = F.conv2d(
            x, self.conv1_w.reshape(P * c1, 1, 3, 3), self.conv1_b.flatten(), padding=1, groups=P
        )
        x = F.max_pool2d(F.relu(x), 2)  # (N, P*c1, H/2, W/2)
        x = F.conv2d(
            x, self.conv2_w.reshape(P * c2, c1, 3, 3), self.conv2_b.flatten(), padding=1, groups=P
        )
        x = F.adaptive_avg_pool2d(F.relu(x), 2)  # (N, P*c2, 2, 2)
        x = x.reshape(N, P, 4 * c2).transpose(0, 1)  # (P, N, 4*c2)
        return torch.baddbmm(self.fc_b, x, self.fc_w)  # (P, N, out)


class DigitSequenceModel(nn.Module):
    """CNN encoder per image, then a recurrent head: indices (P, B, T) -> (P, B, out)."""

    def __init__(
        self,
        model: ModelConfig,
        pool: Tensor,
        out_features: int,
        *,
        population: int,
        code_size: int,
        code_activation: CodeActivation,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("pool", pool.to(device=device, dtype=dtype), persistent=False)
        self.code_activation = code_activation
        self.encoder = PopulationCNN(code_size, population=population, device=device, dtype=dtype)
        self.head = RecurrentHead(
            model, code_size, out_features, population=population, device=device, dtype=dtype
        )
        self.regularizer = self.head.regularizer

    def encode(self, index: Tensor) -> Tensor:
        """Codes of the images ``index (P, B, T)`` -> (P, B, T, code)."""
        P, B, T = index.shape
        pool: Tensor = self.pool  # type: ignore[assignment]
        unique, inverse = torch.unique(index, return_inverse=True)  # (U,), (P, B, T)
        codes: Tensor
        if unique.numel() <= B * T:
            # evaluation: replicas share the sequences, and long ones reuse the test pool,
            # so each distinct image is encoded once (1000-digit sequences: one pool pass)
            images = pool[unique].unsqueeze(0).expand(P, -1, -1, -1)  # (P, U, H, W)
            codes = self.encoder(images)  # (P, U, code)
            flat = inverse.reshape(P, B * T, 1).expand(-1, -1, codes.shape[-1])
            codes = torch.gather(codes, 1, flat)  # (P, B*T, code)
        else:
            # training: every replica draws its own images
            codes = self.encoder(pool[index.reshape(P, B * T)])  # (P, B*T, code)
        if self.code_activation == "softmax":
            codes = codes.softmax(dim=-1)
        return codes.reshape(P, B, T, -1)

    def forward(self, x: Tensor) -> Tensor:
        index = x.round().long()  # (P, B, T): indices travel as floats, see module docstring
        codes = self.encode(index.clamp(min=0)) * (index >= 0).unsqueeze(-1)  # padding: 0
        return self.head(codes)  # type: ignore[no-any-return]

    def reset_parameters(self, generators: Generators = None) -> None:
        self.encoder.reset_parameters(generators)
        self.head.reset_parameters(list(generators) if generators is not None else None)

    def regularization(self) -> Tensor:
        return self.head.regularization()

    def sparsity_error(self) -> Tensor:
        return self.head.sparsity_error()

    def clamp_(self) -> None:
        self.head.clamp_()


@dataclass(frozen=True, kw_only=True)
class MnistSequenceTask(SequenceTask):
    """Shared by ``mnist-count`` and ``mnist-add``; the data loads on first use."""

    name: ClassVar[str] = "mnist"
    target_kind: ClassVar[str] = "count"
    mnist_dir: str | None = None
    length: int = 10
    min_length: int = 1
    extrapolation_lengths: tuple[int, ...] = (100, 1000)
    data_seed: int = 0
    eval_sequences: int = 1000
    code_activation: CodeActivation | None = None

    def __post_init__(self) -> None:
        if self.op != "add":
            raise ConfigError(
                f"{self.name} has one op, 'add' (accumulate): {self.op=}", field="task.op"
            )
        check_int(self.length, "length", minimum=1)
        check_int(self.min_length, "min_length", minimum=1)
        if self.min_length > self.length:
            raise ConfigError(
                f"min_length must be <= length: {self.min_length=} {self.length=}",
                field=_F + "min_length",
            )
        check_int(self.data_seed, "data_seed", minimum=0)
        check_int(self.eval_sequences, "eval_sequences", minimum=1)
        lengths = self.extrapolation_lengths
        if isinstance(lengths, int):
            lengths = (lengths,)
        if not isinstance(lengths, list | tuple) or not lengths:
            raise ConfigError(
                f"extrapolation_lengths must be a list of ints: {lengths=}",
                field=_F + "extrapolation_lengths",
            )
        for value in lengths:
            check_int(value, "extrapolation_lengths", minimum=1)
        object.__setattr__(self, "extrapolation_lengths", tuple(lengths))
        if self.code_activation not in (None, "softmax", "none"):
            raise ConfigError(
                f"code_activation must be 'softmax' or 'none': {self.code_activation=}",
                field=_F + "code_activation",
            )
        if self.mnist_dir is not None:
            # fail at validation, not in the middle of a study: the files must be there
            folder = Path(str(self.mnist_dir)).expanduser()
            if not folder.is_dir():
                raise MnistDataError(
                    f"mnist_dir {str(folder)!r} is not a folder; it must hold "
                    + ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values()),
                    field=_F + "mnist_dir",
                )
            for stem in MNIST_FILES.values():
                _find(folder, stem)

    @functools.cached_property
    def data(self) -> DigitPools:
        return load_digit_pools(self.mnist_dir, seed=self.data_seed)

    @property
    def code_size(self) -> int:
        return 10 if self.target_kind == "count" else 1

    @property
    def activation(self) -> CodeActivation:
        # counting reads class probabilities; addition needs an unbounded digit value
        if self.code_activation is not None:
            return self.code_activation
        return "softmax" if self.target_kind == "count" else "none"

    @property
    def in_features(self) -> int:
        return self.length

    @property
    def out_features(self) -> int:
        return 10 if self.target_kind == "count" else 1

    def targets(self, labels: Tensor) -> Tensor:
        """Labels ``(..., T)`` (-1: padding) -> counts per class ``(..., 10)`` or their sum
        ``(..., 1)``."""
        valid = labels >= 0
        if self.target_kind == "count":
            counts = F.one_hot(labels.clamp(min=0), 10) * valid.unsqueeze(-1)
            return counts.sum(-2).to(torch.get_default_dtype())
        total = (labels.clamp(min=0) * valid).sum(-1, keepdim=True)
        return total.to(torch.get_default_dtype())

    def sample(
        self, generators: list[torch.Generator], batch_size: int, *, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        drawn = [self._draw_train(g, batch_size) for g in generators]
        index = torch.stack([i for i, _ in drawn])  # (P, B, T)
        lengths = torch.stack([n for _, n in drawn])  # (P, B, 1)
        return self._padded(index, lengths, dtype=dtype)

    def _draw_train(self, generator: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        """``n`` training sequences: image indices ``(n, T)`` and lengths ``(n, 1)``."""
        device, T = generator.device, self.length
        n_train = len(self.data.train_labels)
        index = torch.randint(0, n_train, (n, T), generator=generator, device=device)
        lengths = torch.randint(self.min_length, T + 1, (n, 1), generator=generator, device=device)
        return index, lengths

    def _padded(
        self, index: Tensor, lengths: Tensor, *, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """Training sequences ``index (..., T)`` cut to ``lengths (..., 1)`` -> ``(x, t)``.

        Sequences shorter than T are left-padded with -1, which the model reads as a zero
        code: a NAC accumulator starting from h = 0 is then unaffected by the padding.
        """
        T = index.shape[-1]
        pad = torch.arange(T, device=index.device) < T - lengths  # (..., T)
        index_t = index.masked_fill(pad, -1)  # into the training images
        labels = self.data.train_labels.to(index.device)[index_t.clamp(min=0)]
        return index_t.to(dtype), self.targets(labels.masked_fill(pad, -1)).to(dtype)

    def split_lengths(self) -> dict[str, int]:
        """``interpolation`` at ``length``, ``extrapolation`` at the first extrapolation length,
        ``extrapolation_<L>`` for the others."""
        splits = {"interpolation": self.length, "extrapolation": self.extrapolation_lengths[0]}
        for length in self.extrapolation_lengths[1:]:
            splits[f"extrapolation_{length}"] = length
        return splits

    def evaluation_sets(
        self, generator: torch.Generator, n: int, *, dtype: torch.dtype
    ) -> dict[str, tuple[Tensor, Tensor]]:
        device = generator.device
        n_train, n_test = len(self.data.train_labels), len(self.data.test_labels)
        labels = self.data.test_labels.to(device)
        sets = {}
        for split, length in self.split_lengths().items():
            count = max(10, min(n, self.eval_sequences, _EVAL_IMAGES // length))
            index = torch.randint(0, n_test, (count, length), generator=generator, device=device)
            # test sequences draw only test images (offset past the training pool)
            sets[split] = ((index + n_train).to(dtype), self.targets(labels[index]).to(dtype))
        # the training distribution (training images, lengths min_length..length): the loss
        # whose plateau tells whether a run converged; it never selects a model
        count = max(10, min(n, self.eval_sequences))
        index, lengths = self._draw_train(generator, count)
        sets["train"] = self._padded(index, lengths, dtype=dtype)
        return sets

    def build_model(
        self,
        model: ModelConfig,
        *,
        population: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> PopulationModule:
        pool = torch.cat([self.data.train_images, self.data.test_images])  # (N, H, W)
        return DigitSequenceModel(
            model,
            pool,
            self.out_features,
            population=population,
            code_size=self.code_size,
            code_activation=self.activation,
            device=device,
            dtype=dtype,
        )

    def split_metrics(self, y: Tensor, t: Tensor) -> dict[str, Tensor]:
        """MSE, MAE and ``accuracy``: the share of rounded outputs that are exactly right
        (per class count for counting, per sequence for addition); counting also reports
        ``sequence_accuracy``, the share of sequences with all ten counts right."""
        metrics = regression_metrics(y, t)
        hit = torch.round(y) == t  # (P, N, out)
        metrics["accuracy"] = hit.double().flatten(1).mean(1)
        if self.target_kind == "count":
            metrics["sequence_accuracy"] = hit.all(-1).double().mean(1)
        return metrics

    def options(self) -> dict[str, Any]:
        return {
            "mnist_dir": self.mnist_dir,
            "length": self.length,
            "min_length": self.min_length,
            "extrapolation_lengths": list(self.extrapolation_lengths),
            "data_seed": self.data_seed,
            "eval_sequences": self.eval_sequences,
            "code_activation": self.code_activation,
        }


@dataclass(frozen=True, kw_only=True)
class MnistCount(MnistSequenceTask):
    name: ClassVar[str] = "mnist-count"
    target_kind: ClassVar[str] = "count"


@dataclass(frozen=True, kw_only=True)
class MnistAdd(MnistSequenceTask):
    name: ClassVar[str] = "mnist-add"
    target_kind: ClassVar[str] = "add"


_MNIST_OPTIONS = (
    "mnist_dir",
    "length",
    "min_length",
    "extrapolation_lengths",
    "data_seed",
    "eval_sequences",
    "code_activation",
)


def _parse_lengths(value: object) -> object:
    # the CLI passes "100,1000"; configs pass a list
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.replace(";", ",").split(",") if v.strip())
        except ValueError:
            return value
    return value


def _builder(cls: type[MnistSequenceTask]) -> Any:
    def build(op: str, options: Mapping[str, Any]) -> MnistSequenceTask:
        options = dict(options)
        if "extrapolation_lengths" in options:
            options["extrapolation_lengths"] = _parse_lengths(options["extrapolation_lengths"])
        if options.get("mnist_dir") is not None:
            options["mnist_dir"] = str(options["mnist_dir"])
        return cls(op=op, **options)

    return build


for _cls, _doc in (
    (
        MnistCount,
        "MNIST digit counting (Trask 2018 Table 2): counts per class of a digit sequence.",
    ),
    (MnistAdd, "MNIST digit addition (Trask 2018 Table 2): the sum of a digit sequence."),
):
    register_task(
        TaskSpec(
            name=_cls.name, builder=_builder(_cls), ops=("add",), options=_MNIST_OPTIONS, doc=_doc
        )
    )
