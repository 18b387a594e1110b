from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nalu_core import (
    ConfigError,
    ModelConfig,
    NumberTranslation,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
    build_task,
)
from nalu_core._tasks_language import (
    TOKEN_IDS,
    VOCABULARY,
    encode_numbers,
    number_to_words,
    paper_split,
    prefix_values,
)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty one"),
        (100, "one hundred"),
        (105, "one hundred and five"),
        (312, "three hundred and twelve"),
        (999, "nine hundred and ninety nine"),
    ],
)
def test_number_words(n: int, text: str) -> None:
    assert " ".join(number_to_words(n)) == text


def test_every_number_reads_back_to_its_value() -> None:
    texts = set()
    for n in range(1000):
        words = number_to_words(n)
        assert prefix_values(words)[-1] == n
        texts.add(" ".join(words))
    assert len(texts) == 1000
    with pytest.raises(ValueError, match="0..999"):
        number_to_words(1000)


@given(st.integers(0, 999))
def test_encoding_matches_the_words(n: int) -> None:
    ids, values = encode_numbers([n])
    words = [VOCABULARY[i] for i in ids[0].tolist() if i != 0]
    assert words == number_to_words(n)
    assert values[0, -1] == n
    assert values[0, : len(words)].tolist() == prefix_values(words)


def test_prefix_values_follow_the_reading() -> None:
    assert prefix_values(["three", "hundred", "and", "twelve"]) == [3, 300, 300, 312]
    assert prefix_values(["forty", "two"]) == [40, 42]


def test_paper_split_sizes_and_seeding() -> None:
    split = paper_split(0)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 169, "validation": 200, "test": 631}
    together = split["train"] + split["validation"] + split["test"]
    assert sorted(together) == list(range(1000))
    assert set(range(20)) <= set(split["train"])
    assert paper_split(0) == split and paper_split(1) != split


def _task(**options: object) -> NumberTranslation:
    task = build_task(TaskConfig(name="number-translation", options=options))
    assert isinstance(task, NumberTranslation)
    return task


def test_samples_are_training_numbers() -> None:
    task = _task()
    train = set(paper_split(0)["train"])
    x, t = task.sample(
        [torch.Generator().manual_seed(s) for s in range(2)], 16, dtype=torch.float32
    )
    assert x.shape == (2, 16, 5) and t.shape == (2, 16, 1)
    for ids, value in zip(x.reshape(-1, 5).long(), t.reshape(-1).tolist(), strict=True):
        words = [VOCABULARY[i] for i in ids.tolist() if i != 0]
        assert prefix_values(words)[-1] == value and int(value) in train
    sets = task.evaluation_sets(torch.Generator(), 10, dtype=torch.float32)
    assert {k: len(v[0]) for k, v in sets.items()} == {
        "interpolation": 200,
        "extrapolation": 631,
        "train": 169,
    }


@pytest.mark.parametrize("head_at", ["last", "every"])
def test_model_shapes(head_at: str) -> None:
    task = _task(head_at=head_at, embedding_size=8)
    model = task.build_model(ModelConfig.stacked("nalu"), population=3)
    x, t = task.sample(
        [torch.Generator().manual_seed(s) for s in range(3)], 6, dtype=torch.float32
    )
    y = model(x)
    assert y.shape == t.shape == (3, 6, 1 if head_at == "last" else 5)
    if head_at == "every":
        # after the last word the output holds still, as the target does
        short = x[0, :, 1] == 0  # one-word numbers
        if short.any():
            assert torch.all(y[0, short] == y[0, short][:, :1])


def test_bad_options_and_recurrent_heads_are_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        _task(head_at="middle")
    assert err.value.field == "task.options.head_at"
    with pytest.raises(ConfigError) as err:
        build_task(TaskConfig(name="number-translation", op="mul"))
    assert err.value.field == "task.op"
    with pytest.raises(ConfigError) as err:
        _task().build_model(ModelConfig.stacked("lstm"), population=1)
    assert err.value.field == "model.layers[0].unit"


def test_trainer_runs_translation() -> None:
    config = RunConfig(
        task=TaskConfig(name="number-translation", options={"embedding_size": 16}),
        model=ModelConfig.stacked("linear"),
        train=TrainConfig(seeds=2, steps=3, eval_every=3, batch_size=8),
    )
    trainer = PopulationTrainer(config)
    (report,) = list(trainer.run())
    assert len(report.interpolation_mse) == 2


def test_token_ids_are_stable() -> None:
    # saved models index the embedding by these ids
    assert TOKEN_IDS["<pad>"] == 0 and TOKEN_IDS["zero"] == 1 and len(VOCABULARY) == 31


def test_to_config_round_trips() -> None:
    task = _task(head_at="every", split_seed=3)
    assert build_task(task.to_config()) == task


@pytest.mark.parametrize("head_at", ["last", "every"])
def test_mae_is_of_the_numbers_value(head_at: str) -> None:
    task = build_task(TaskConfig(name="number-translation", options={"head_at": head_at}))
    assert isinstance(task, NumberTranslation)
    t = torch.tensor([[3.0, 300.0, 300.0, 312.0, 312.0], [7.0, 7.0, 7.0, 7.0, 7.0]])
    y = t.expand(2, 2, 5).clone()
    y[0, :, :4] = 0.0  # replica 0 is wrong on every prefix but right on the number
    y[1, 0, -1] = 302.0  # replica 1 misreads 312 as 302
    y[1, 1, -1] = 9.0  # and 7 as 9
    if head_at == "last":
        t, y = t[:, -1:], y[..., -1:]
    metrics = task.split_metrics(y, t)
    assert metrics["mae"].tolist() == [0.0, (10.0 + 2.0) / 2]
    assert metrics["mse"].tolist() == [0.0, (100.0 + 4.0) / 2]


def test_trainer_reports_train_validation_and_test_mae() -> None:
    config = RunConfig(
        task=TaskConfig(name="number-translation", options={"embedding_size": 8}),
        model=ModelConfig.stacked("nalu"),
        train=TrainConfig(seeds=2, steps=12, eval_every=3, batch_size=16, device="cpu"),
    )
    trainer = PopulationTrainer(config)
    for _ in trainer.run():
        pass
    metrics = trainer.result().metrics()
    for split in ("train", "interpolation", "extrapolation"):
        assert metrics[f"{split}_mae_best"] <= metrics[f"{split}_mae_median"] < 1000
    assert metrics["converged"] in (0.0, 1.0)
    assert 0 <= metrics["train_mse_late_share"] <= 1
