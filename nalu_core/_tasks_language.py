"""Number translation (Trask et al. 2018, §4.4, Table 3): English number words to their value.

The numbers are 0..999 written as "three hundred and twelve" (1000 is *not* included: the
paper's split 169 + 200 + 631 sums to exactly the 1000 numbers 0..999). The split is the
paper's: train = 0..19 plus 149 numbers drawn from 20..999, then 200 validation and 631 test
numbers, all from ``split_seed``. The trainer's ``interpolation`` split is the validation set
(model selection) and ``extrapolation`` the test set; ``train`` is reported too.

The model (sizes from the authors via Madsen & Johansen 2020): a token embedding of 256, an
LSTM of 10, then the configured head (``nalu``, ``nac_add``, ``linear``, ...) at the last token
(``head_at="last"``) or at every token (``head_at="every"``). With ``every``, the target of
token ``i`` is the value of the words read so far ("three hundred" -> 300), the loss covers all
tokens, and the last output column is the number's value, which the MAE reports. Sequences
are right-padded; token ids travel as floats, like the MNIST indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from nalu_core._config import ModelConfig, TaskConfig
from nalu_core._errors import ConfigError
from nalu_core._network import build_network
from nalu_core._recurrent import PopulationLSTM
from nalu_core._tasks import PopulationModule, TaskSpec, register_task
from nalu_core._tasks_sequence import SequenceTask, check_int, regression_metrics
from nalu_core._units import Generators, _fill_

HeadAt = Literal["last", "every"]
_F = "task.options."
ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
PAD = "<pad>"
VOCABULARY = (PAD, *ONES, *TENS, "hundred", "and")
TOKEN_IDS = {word: i for i, word in enumerate(VOCABULARY)}
MAX_NUMBER = 999
MAX_TOKENS = 5  # "nine hundred and ninety nine"
TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE = 169, 200, 631


def number_to_words(n: int) -> list[str]:
    """``312 -> ["three", "hundred", "and", "twelve"]``; 0..999 only."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number translation covers 0..{MAX_NUMBER}: {n=}")
    hundreds, rest = divmod(n, 100)
    words = [ONES[hundreds], "hundred"] if hundreds else []
    if hundreds and rest:
        words.append("and")
    if rest or not hundreds:
        if rest < 20:
            words.append(ONES[rest])
        else:
            tens, ones = divmod(rest, 10)
            words.append(TENS[tens - 2])
            if ones:
                words.append(ONES[ones])
    return words


def prefix_values(words: list[str]) -> list[int]:
    """The value of the words read so far, token by token: three hundred and twelve ->
    3, 300, 300, 312."""
    values, current = [], 0
    for word in words:
        if word == "hundred":
            current *= 100
        elif word in ONES:
            current += ONES.index(word)
        elif word in TENS:
            current += 10 * (TENS.index(word) + 2)
        elif word != "and":
            raise ValueError(f"not a number word: {word!r}")
        values.append(current)
    return values


def paper_split(seed: int) -> dict[str, list[int]]:
    """Trask's split of 0..999: 169 train (0..19 + 149 random), 200 validation, 631 test."""
    order = torch.randperm(MAX_NUMBER + 1 - 20, generator=torch.Generator().manual_seed(seed))
    rest = [20 + int(i) for i in order]
    n_extra = TRAIN_SIZE - 20
    return {
        "train": list(range(20)) + sorted(rest[:n_extra]),
        "validation": sorted(rest[n_extra : n_extra + VALIDATION_SIZE]),
        "test": sorted(rest[n_extra + VALIDATION_SIZE :]),
    }


def encode_numbers(numbers: list[int]) -> tuple[Tensor, Tensor]:
    """Token ids ``(N, MAX_TOKENS)`` (right-padded with 0) and prefix values ``(N, MAX_TOKENS)``
    (the final value repeated over the padding)."""
    ids = torch.zeros(len(numbers), MAX_TOKENS, dtype=torch.long)
    values = torch.zeros(len(numbers), MAX_TOKENS)
    for row, n in enumerate(numbers):
        words = number_to_words(n)
        prefix = prefix_values(words)
        ids[row, : len(words)] = torch.tensor([TOKEN_IDS[w] for w in words])
        values[row] = torch.tensor(prefix + [prefix[-1]] * (MAX_TOKENS - len(words)))
    return ids, values


class NumberReader(nn.Module):
    """Embedding -> LSTM -> head: token ids (P, B, L) -> (P, B, 1), or (P, B, L) per token."""

    def __init__(
        self,
        model: ModelConfig,
        *,
        population: int,
        embedding_size: int,
        lstm_size: int,
        head_at: HeadAt,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.head_at = head_at
        self.embedding = nn.Parameter(
            torch.empty(population, len(VOCABULARY), embedding_size, **kw)
        )
        self.lstm = PopulationLSTM(embedding_size, lstm_size, population=population, **kw)
        self.head = build_network(model, lstm_size, 1, population=population, **kw)
        self.regularizer = self.head.regularizer
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        _fill_(self.embedding, generators, "normal", 0.0, 1.0)  # torch.nn.Embedding's N(0, 1)
        self.lstm.reset_parameters(generators)
        self.head.reset_parameters(generators)

    def forward(self, x: Tensor) -> Tensor:
        ids = x.round().long()  # (P, B, L)
        P, B, L = ids.shape
        replica = torch.arange(P, device=ids.device).view(P, 1, 1)
        h = self.lstm(self.embedding[replica, ids])  # (P, B, L, H)
        last = ((ids != 0).sum(-1) - 1).clamp(min=0)  # (P, B): index of the last real token
        if self.head_at == "last":
            h_last = torch.gather(h, 2, last.view(P, B, 1, 1).expand(-1, -1, 1, h.shape[-1]))
            return self.head(h_last.squeeze(2))  # type: ignore[no-any-return]
        y = self.head(h.reshape(P, B * L, -1)).reshape(P, B, L)  # (P, B, L)
        # after the last word the prediction stays that of the last word
        position = torch.arange(L, device=ids.device).view(1, 1, L)
        final = torch.gather(y, 2, last.unsqueeze(-1))  # (P, B, 1)
        return torch.where(position > last.unsqueeze(-1), final, y)

    def regularization(self) -> Tensor:
        return self.head.regularization()

    def sparsity_error(self) -> Tensor:
        return self.head.sparsity_error()

    def clamp_(self) -> None:
        self.head.clamp_()


@dataclass(frozen=True, kw_only=True)
class NumberTranslation(SequenceTask):
    """English number words 0..999 to value; see the module docstring."""

    name: ClassVar[str] = "number-translation"
    split_seed: int = 0
    embedding_size: int = 256
    lstm_size: int = 10
    head_at: HeadAt = "last"

    def __post_init__(self) -> None:
        if self.op != "add":
            raise ConfigError(f"{self.name} has one op, 'add': {self.op=}", field="task.op")
        check_int(self.split_seed, "split_seed", minimum=0)
        check_int(self.embedding_size, "embedding_size", minimum=1)
        check_int(self.lstm_size, "lstm_size", minimum=1)
        if self.head_at not in ("last", "every"):
            raise ConfigError(
                f"head_at must be 'last' or 'every': {self.head_at=}", field=_F + "head_at"
            )

    @property
    def in_features(self) -> int:
        return MAX_TOKENS

    @property
    def out_features(self) -> int:
        return 1 if self.head_at == "last" else MAX_TOKENS

    def _encoded(
        self, split: str, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        ids, values = encode_numbers(paper_split(self.split_seed)[split])
        t = values if self.head_at == "every" else values[:, -1:]
        return ids.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)

    def sample(
        self, generators: list[torch.Generator], batch_size: int, *, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        device = generators[0].device
        ids, t = self._encoded("train", device, dtype)  # (169, L), (169, out)
        pick = torch.stack(
            [
                torch.randint(0, len(ids), (batch_size,), generator=g, device=device)
                for g in generators
            ]
        )  # (P, B)
        return ids[pick], t[pick]  # (P, B, L), (P, B, out)

    def evaluation_sets(
        self, generator: torch.Generator, n: int, *, dtype: torch.dtype
    ) -> dict[str, tuple[Tensor, Tensor]]:
        device = generator.device
        return {
            "interpolation": self._encoded("validation", device, dtype),
            "extrapolation": self._encoded("test", device, dtype),
            "train": self._encoded("train", device, dtype),
        }

    def build_model(
        self,
        model: ModelConfig,
        *,
        population: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> PopulationModule:
        return NumberReader(
            model,
            population=population,
            embedding_size=self.embedding_size,
            lstm_size=self.lstm_size,
            head_at=self.head_at,
            device=device,
            dtype=dtype,
        )

    def split_metrics(self, y: Tensor, t: Tensor) -> dict[str, Tensor]:
        """MSE and MAE of the number's value (the last output column)."""
        return regression_metrics(y[..., -1:], t[..., -1:])

    def to_config(self) -> TaskConfig:
        options = {
            "split_seed": self.split_seed,
            "embedding_size": self.embedding_size,
            "lstm_size": self.lstm_size,
            "head_at": self.head_at,
        }
        return TaskConfig(name=self.name, op=self.op, options=options)


def _build(op: str, options: Mapping[str, Any]) -> NumberTranslation:
    return NumberTranslation(op=op, **options)


register_task(
    TaskSpec(
        name="number-translation",
        builder=_build,
        ops=("add",),
        options=("split_seed", "embedding_size", "lstm_size", "head_at"),
        doc="Number words 0..999 to value (Trask 2018 Table 3): embedding 256, LSTM 10, head.",
    )
)
