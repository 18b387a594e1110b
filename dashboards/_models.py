"""The JSON API's schemas: every page is rendered from one of these, so the API and the HTML
always agree, and FastAPI documents them in its OpenAPI schema."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StateCounts(BaseModel):
    COMPLETE: int = 0
    PRUNED: int = 0
    FAIL: int = 0
    RUNNING: int = 0
    OTHER: int = 0


class StudySummary(BaseModel):
    name: str
    experiment_id: str
    trials: int
    states: StateCounts
    slices: list[str] = Field(description="task/op combinations present, e.g. 'static/div'")
    best_success_rate: float | None


class StudiesResponse(BaseModel):
    tracking_uri: str
    studies: list[StudySummary]


class TrialRow(BaseModel):
    """One trial (one configuration trained over many seeds) and its final figures."""

    run_id: str
    unit: str
    task: str
    op: str
    state: str
    config: str = Field(description="hyperparameters other than unit/task/op, as k=v")
    success_rate: float | None
    success_lower: float | None
    success_upper: float | None
    extrapolation_mse_median: float | None
    interpolation_mse_median: float | None
    seeds: int | None
    robust: bool | None
    optuna_trial: str | None
    mlflow_url: str | None


class LeaderboardResponse(BaseModel):
    study: str
    task: str
    op: str
    slices: list[str]
    ranking: str
    best_per_unit: list[TrialRow]
    top_configs: list[TrialRow]
    complete_trials: int


class TableCell(BaseModel):
    success_rate: float
    success_lower: float
    success_upper: float
    run_id: str
    trials: int


class MadsenTableResponse(BaseModel):
    study: str
    task: str
    units: list[str]
    ops: list[str]
    cells: dict[str, dict[str, TableCell]] = Field(
        description="cells[unit][op]; missing = no data"
    )


class ProbePoint(BaseModel):
    abs_denominator: float = Field(description="bin centre (geometric) of |denominator|")
    lo: float | None
    hi: float | None
    error: float = Field(description="median over seeds of the extrapolation error in the bin")
    count: int | None = None


class DivisionCurve(BaseModel):
    unit: str
    run_id: str
    success_rate: float | None
    success_lower: float | None
    success_upper: float | None
    summary: str | None
    points: list[ProbePoint]
    growth: float | None = Field(
        description="error at the smallest |denominator| / at the largest"
    )


class DivisionResponse(BaseModel):
    study: str
    task: str
    op: str
    explanation: str
    curves: list[DivisionCurve]
    missing: list[str] = Field(description="units whose best run has no readable probe")


class Importance(BaseModel):
    param: str
    importance: float


class ImportanceResponse(BaseModel):
    study: str
    task: str | None
    op: str | None
    evaluator: str
    source: str = Field(description="'optuna' (the study's storage) or 'mlflow' (rebuilt)")
    target: str
    trials: int
    importances: list[Importance]
    note: str | None = None
    pending: bool = Field(
        default=False, description="still computing in the background; ask again shortly"
    )


class ParallelResponse(BaseModel):
    study: str
    task: str | None
    op: str | None
    params: list[str] = Field(description="the axes drawn (chosen, else the most telling)")
    numeric: dict[str, bool]
    rows: list[dict[str, str | float | None]]
    target: str
    log: dict[str, bool] = Field(
        default_factory=dict, description="axes drawn on a log scale (log-sampled params)"
    )
    available: list[str] = Field(
        default_factory=list, description="every param that varies; ?params= picks the axes"
    )


class ScatterPoint(BaseModel):
    run_id: str
    unit: str
    op: str
    interpolation_mse_median: float
    extrapolation_mse_median: float
    success_rate: float | None


class ScatterResponse(BaseModel):
    study: str
    task: str | None
    op: str | None
    points: list[ScatterPoint]


class SeedRow(BaseModel):
    seed: int
    interpolation_mse: float | None
    extrapolation_mse: float | None
    success: bool | None
    solved_at: int | None
    sparsity_error: float | None
    diverged: bool | None


class CurvePoint(BaseModel):
    step: int
    value: float


class TrialResponse(BaseModel):
    trial: TrialRow
    study: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    curves: dict[str, list[CurvePoint]]
    seeds: list[SeedRow]
    division: DivisionCurve | None
    artifacts: list[str]


class ErrorResponse(BaseModel):
    error: str
    detail: str
    field: str | None = None
