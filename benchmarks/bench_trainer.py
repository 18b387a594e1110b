"""Population-trainer throughput against the per-seed loop of single-run research code.

For each input width (100-d: Madsen's static task; 2-d: the single-module task) and each
population size P, this measures, side by side in one process:

- the population trainer: ``PopulationTrainer._train_step`` on P replicas of a two-layer
  NAU -> NAU (or NALU -> NALU) network, hidden size 2, batch 128 per replica;
- the per-seed loop: one ordinary ``nn.Module`` with the same two layers, one
  ``torch.optim.Adam``, batch 128 from a fresh ``torch.rand`` every step, the way a single
  run is usually written. Its throughput does not depend on P, so it is re-measured next
  to every population measurement and the ratio uses the adjacent figure (the machine may
  be shared: only ratios taken in the same minute mean much).

It also reports the memory per replica (persistent state: parameters, gradients, optimiser
state and the best-so-far copy; and the per-step batch), a profile of one population step
split into data generation, forward, backward, optimiser and evaluation, and the machine's
measured arithmetic/RNG/memory-bandwidth limits for the same work.

    python benchmarks/bench_trainer.py                      # CPU, P up to 4096
    python benchmarks/bench_trainer.py --device cuda --populations 1 16 256 4096 65536
    python benchmarks/bench_trainer.py --smoke-test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from nalu_core import (
    LayerConfig,
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from nalu_core._tasks import Task

BATCH = 128
HIDDEN = 2


# --- the per-seed baseline: how a single run is usually written ---------------------------


class PlainNAU(nn.Module):
    """a = W x with W clamped to [-1, 1] (Madsen 2020), as a plain single-model layer."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        r = min(0.5, math.sqrt(3.0) * math.sqrt(2.0 / (in_features + out_features)))
        self.W = nn.Parameter(torch.empty(out_features, in_features).uniform_(-r, r))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.W.t()  # (B, in) -> (B, out)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.W.clamp_(-1.0, 1.0)


class PlainNMU(nn.Module):
    """z = prod_i (W_i x_i + 1 - W_i) with W clamped to [0, 1] (Madsen 2020)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(out_features, in_features).uniform_(0.25, 0.75))

    def forward(self, x: Tensor) -> Tensor:
        w = self.W.unsqueeze(0)  # (1, out, in)
        return torch.addcmul(1 - w, w, x.unsqueeze(1)).prod(-1)  # (B, out)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.W.clamp_(0.0, 1.0)


class PlainNALU(nn.Module):
    """Trask's NALU with a shared W = tanh(Ŵ) σ(M̂) and an input gate σ(G x)."""

    def __init__(self, in_features: int, out_features: int, epsilon: float = 1e-7) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.W_hat = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1))
        self.M_hat = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1))
        self.G = nn.Parameter(torch.empty(out_features, in_features).uniform_(-0.2, 0.2))

    def forward(self, x: Tensor) -> Tensor:
        w = torch.tanh(self.W_hat) * torch.sigmoid(self.M_hat)
        a = x @ w.t()
        m = torch.exp(torch.log(x.abs() + self.epsilon) @ w.t())
        g = torch.sigmoid(x @ self.G.t())
        return g * a + (1 - g) * m

    def clamp_(self) -> None:
        pass


PLAIN_UNITS: dict[str, type[nn.Module]] = {"nau": PlainNAU, "nmu": PlainNMU, "nalu": PlainNALU}
# model name -> (layer 1, layer 2) and the op it is trained on
MODELS: dict[str, tuple[str, str, str]] = {
    "nau-nau": ("nau", "nau", "add"),
    "nau-nmu": ("nau", "nmu", "mul"),
    "nalu-nalu": ("nalu", "nalu", "add"),
}


def static_target(x: Tensor, a: tuple[int, int], b: tuple[int, int], op: str) -> Tensor:
    sa = x[:, a[0] : a[1]].sum(-1, keepdim=True)
    sb = x[:, b[0] : b[1]].sum(-1, keepdim=True)
    return sa * sb if op == "mul" else sa + sb


def per_seed_rate(model_name: str, dim: int, *, seconds: float, device: str) -> float:
    """Steps per second of the plain single-model loop (one seed), measured for ``seconds``."""
    torch.manual_seed(0)
    first, second, op = MODELS[model_name]
    model = nn.Sequential(PLAIN_UNITS[first](dim, HIDDEN), PLAIN_UNITS[second](HIDDEN, 1))
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    a, b = (0, max(1, dim // 4)), (max(1, dim // 8), max(2, dim // 4 + dim // 8))

    def step() -> None:
        x = torch.rand(BATCH, dim, device=device) + 1.0  # U[1, 2)
        t = static_target(x, a, b, op)
        loss = (model(x) - t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for layer in model:
            layer.clamp_()  # type: ignore[operator]

    return _rate(step, seconds=seconds, device=device)


# --- the population trainer ---------------------------------------------------------------


SUBSET_OFFSET = {"value": "seed"}  # set from --subset-offset


def population_trainer(
    model_name: str, dim: int, population: int, *, device: str, streams: int | None = None
) -> PopulationTrainer:
    first, second, op = MODELS[model_name]
    options = {"input_size": dim, "subset_offset": SUBSET_OFFSET["value"]}
    config = RunConfig(
        task=TaskConfig(name="static", op=op, options=options),
        model=ModelConfig(
            layers=(LayerConfig(unit=first), LayerConfig(unit=second)), hidden_size=HIDDEN
        ),
        # a small fixed eval set: evaluation is profiled separately, not in the step rate
        train=TrainConfig(
            seeds=population,
            steps=10**9,
            batch_size=BATCH,
            eval_samples=1000,
            device=device,
            data_streams=streams,
        ),
    )
    return PopulationTrainer(config)


def parse_streams(value: str, population: int) -> int | None:
    """``P`` (one stream per replica) or a number of groups, capped at the population."""
    if value.upper() == "P":
        return None
    return min(int(value), population)


class SingleStreamSampling:
    """What-if, not the trainer's behaviour: the whole (P, B, in) batch from one generator in
    one call, drawn straight into the range. Replica p's data then depends on P, which the
    trainer rules out; this bounds what a faster per-replica RNG could gain."""

    counter_sampling = False

    def __init__(self, task: Any) -> None:
        self._task = task
        self._generator = torch.Generator(device="cpu").manual_seed(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def sample(
        self, generators: list[torch.Generator], batch_size: int, *, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        device = generators[0].device
        if device.type != "cpu":
            self._generator = generators[0]
        x = torch.empty(
            len(generators), batch_size, self._task.in_features, device=device, dtype=dtype
        )
        lo, hi = self._task.interpolation[0]
        x.uniform_(lo, hi, generator=self._generator)  # (P, B, in)
        return x, self._task._target(x)


def population_rate(trainer: PopulationTrainer, *, seconds: float, device: str) -> float:
    """Population steps per second (multiply by P for replica-steps/s)."""

    def step() -> None:
        trainer._train_step()
        trainer.step += 1

    return _rate(step, seconds=seconds, device=device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(step: Callable[[], object], *, seconds: float, device: str, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n % 4 == 0 or n < 4:
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return n / elapsed


def state_bytes_per_replica(trainer: PopulationTrainer) -> dict[str, float]:
    """Bytes each replica keeps between steps, and the per-step batch it draws."""
    P = trainer.population
    params = sum(p.numel() * p.element_size() for p in trainer.params)
    opt = sum(
        v.numel() * v.element_size()
        for s in trainer.optimizer.state.values()
        for v in s.values()
        if isinstance(v, Tensor) and v.dim() > 0
    )
    best = sum(v.numel() * v.element_size() for v in trainer.best_params.values())
    persistent = (2 * params + opt + best) / P  # parameters + gradients + Adam + best copy
    x_bytes = BATCH * trainer.task.in_features * torch.finfo(trainer.dtype).bits // 8
    return {"persistent_bytes": persistent, "batch_bytes": float(x_bytes)}


def peak_cuda_bytes_per_replica(trainer: PopulationTrainer, device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.reset_peak_memory_stats()
    trainer._train_step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / trainer.population


# --- profile: one population step split into its phases -----------------------------------


def profile_step(trainer: PopulationTrainer, *, steps: int, device: str) -> dict[str, float]:
    """Seconds per step of each phase, mirroring ``PopulationTrainer._train_step``; the
    remainder of the full step (divergence checks, masking, bookkeeping) is ``other``."""
    phases = dict.fromkeys(("data", "forward", "backward", "optimizer", "clamp"), 0.0)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        phases[name] += time.perf_counter() - t0
        return out

    for _ in range(steps):
        x, t = timed("data", trainer._sample)
        loss = timed("forward", lambda: trainer.task.loss(trainer.network(x), t).sum())  # noqa: B023
        trainer.optimizer.zero_grad()
        timed("backward", lambda: loss.backward())  # noqa: B023
        timed("optimizer", trainer.optimizer.step)
        timed("clamp", trainer.network.clamp_)
    out = {k: v / steps for k, v in phases.items()}
    full = 1.0 / population_rate(trainer, seconds=max(0.5, sum(phases.values())), device=device)
    out["other"] = max(0.0, full - sum(out.values()))
    out["full_step"] = full
    # one evaluation on Madsen's 2 x 10k samples, amortised over eval_every = 1000 steps
    evaluation = _eval_seconds(trainer, samples=10_000, device=device)
    out["evaluation_per_step"] = evaluation / 1000
    return out


def _eval_seconds(trainer: PopulationTrainer, *, samples: int, device: str) -> float:
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    sets = trainer.task.evaluation_sets(gen, samples, dtype=trainer.dtype)
    saved = trainer.eval_sets
    trainer.eval_sets = sets
    try:
        _sync(device)
        t0 = time.perf_counter()
        trainer._evaluate_mse()
        _sync(device)
        return time.perf_counter() - t0
    finally:
        trainer.eval_sets = saved


# --- the machine's limits ------------------------------------------------------------------


def machine_limits(device: str, *, seconds: float) -> dict[str, float]:
    """Measured single-process peaks: matmul FLOP/s, uniform RNG numbers/s, copy bytes/s."""
    n = 1024 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    flops = 2 * n**3 * _rate(lambda: torch.mm(a, b), seconds=seconds, device=device, warmup=1)
    big = torch.empty(1 << 24, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    rng = big.numel() * _rate(
        lambda: big.uniform_(0, 1, generator=gen), seconds=seconds, device=device, warmup=1
    )
    dst = torch.empty_like(big)
    copy = 2 * big.numel() * 4 * _rate(lambda: dst.copy_(big), seconds=seconds, device=device)
    return {"matmul_flops": flops, "rng_numbers_per_s": rng, "copy_bytes_per_s": copy}


def work_per_replica_step(dim: int) -> dict[str, float]:
    """Arithmetic of one replica-step of the NAU -> NAU network (forward + backward + Adam).

    Forward: 2·B·(dim·H + H) FLOPs; backward about twice that; the loss and the target a
    few B·dim. Memory traffic is dominated by the batch x (B·dim floats), written by the RNG
    and read by the target, the forward matmul and the weight-gradient matmul.
    """
    fwd = 2 * BATCH * (dim * HIDDEN + HIDDEN)
    flops = 3 * fwd + 2 * BATCH * dim
    return {
        "flops": float(flops),
        "rng_numbers": float(BATCH * dim),
        "bytes": float(4 * BATCH * dim * 5),
    }


# --- driver --------------------------------------------------------------------------------


def thread_scaling(args: argparse.Namespace, dim: int, *, device: str) -> dict[str, Any]:
    """Population steps/s at 1 and at ``args.threads_max`` intra-op threads, alternated
    (1, N, 1, N) on the same trainer so that the ratio is taken side by side."""
    P = args.profile_population
    trainer = population_trainer(args.model, dim, P, device=device)
    rates: dict[int, list[float]] = {1: [], args.threads_max: []}
    for _ in range(2):
        for threads in rates:
            torch.set_num_threads(threads)
            rates[threads].append(population_rate(trainer, seconds=args.seconds, device=device))
    torch.set_num_threads(args.threads)
    one, many = (sum(rates[t]) / len(rates[t]) for t in rates)
    out = {
        "dim": dim,
        "population": P,
        "threads": args.threads_max,
        "steps_per_s_1_thread": one,
        f"steps_per_s_{args.threads_max}_threads": many,
        "speed_up": many / one,
        "load_average": load_average(),
    }
    print(
        f"threads d={dim} P={P}: 1 thread {one:.2f} steps/s, {args.threads_max} threads "
        f"{many:.2f} steps/s -> {many / one:.2f}x",
        flush=True,
    )
    return out


def load_average() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    rows: list[dict[str, Any]] = []
    for dim in args.dims:
        for P, streams_arg in ((P, g) for P in args.populations for g in args.streams):
            streams = parse_streams(streams_arg, P)
            trainer = population_trainer(args.model, dim, P, device=device, streams=streams)
            if args.single_stream_sampling:
                trainer.task = cast(Task, SingleStreamSampling(trainer.task))
            base_before = per_seed_rate(args.model, dim, seconds=args.seconds, device=device)
            pop = population_rate(trainer, seconds=args.seconds, device=device)
            base_after = per_seed_rate(args.model, dim, seconds=args.seconds, device=device)
            base = (base_before + base_after) / 2
            row = {
                "dim": dim,
                "population": P,
                "data_streams": trainer.groups,
                "population_steps_per_s": pop,
                "replica_steps_per_s": pop * P,
                "per_seed_steps_per_s": base,
                "ratio": pop * P / base,
                **state_bytes_per_replica(trainer),
                "cuda_peak_bytes_per_replica": peak_cuda_bytes_per_replica(trainer, device),
                "load_average": load_average(),
            }
            rows.append(row)
            print(
                f"{args.model} d={dim:3d} P={P:6d} G={trainer.groups:6d}  "
                f"{row['replica_steps_per_s']:12.0f} replica-steps/s  "
                f"per-seed {base:7.0f} steps/s  ratio {row['ratio']:8.1f}x  "
                f"state {row['persistent_bytes']:.0f} B/replica  "
                f"load {' '.join(f'{v:.1f}' for v in row['load_average'])}",
                flush=True,
            )
            del trainer
    scaling = []
    for dim in args.thread_scaling_dims:
        scaling.append(thread_scaling(args, dim, device=device))
    profiles = []
    for dim in args.dims:
        trainer = population_trainer(args.model, dim, args.profile_population, device=device)
        if args.single_stream_sampling:
            trainer.task = cast(Task, SingleStreamSampling(trainer.task))
        prof = profile_step(trainer, steps=args.profile_steps, device=device)
        limits = work_per_replica_step(dim)
        profiles.append(
            {
                "dim": dim,
                "population": args.profile_population,
                "seconds": prof,
                "work_per_replica_step": limits,
            }
        )
        total = prof["full_step"] + prof["evaluation_per_step"]
        parts = "  ".join(
            f"{k} {100 * v / total:.0f}%" for k, v in prof.items() if k != "full_step"
        )
        print(f"profile d={dim} P={args.profile_population}: {1e3 * total:.2f} ms/step; {parts}")
    limits = machine_limits(device, seconds=args.seconds)
    for p in profiles:
        work = p["work_per_replica_step"]
        P = p["population"]
        floor = {
            "flops": work["flops"] * P / limits["matmul_flops"],
            "rng": work["rng_numbers"] * P / limits["rng_numbers_per_s"],
            "bytes": work["bytes"] * P / limits["copy_bytes_per_s"],
        }
        p["floor_seconds"] = floor
        bound = max(floor.values())
        p["fraction_of_limit"] = bound / p["seconds"]["full_step"]
        print(
            f"limit d={p['dim']}: floor {1e3 * bound:.2f} ms/step "
            f"(flops {1e3 * floor['flops']:.3f}, rng {1e3 * floor['rng']:.3f}, "
            f"memory {1e3 * floor['bytes']:.3f}); measured {1e3 * p['seconds']['full_step']:.2f}"
            f" ms -> {100 * p['fraction_of_limit']:.0f}% of the limit"
        )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(),
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": args.model,
        "subset_offset": args.subset_offset,
        "thread_scaling": scaling,
        "single_stream_sampling": args.single_stream_sampling,
        "rows": rows,
        "profiles": profiles,
        "limits": limits,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", choices=sorted(MODELS), default="nau-nau")
    parser.add_argument(
        "--unit",
        choices=("nau", "nalu"),
        default=None,
        help="the earlier spelling of --model: nau = nau-nau, nalu = nalu-nalu",
    )
    parser.add_argument(
        "--streams",
        nargs="+",
        default=["P"],
        help="data streams per row: P (one per replica) or a number of groups",
    )
    parser.add_argument("--thread-scaling-dims", type=int, nargs="*", default=[])
    parser.add_argument(
        "--subset-offset",
        choices=("seed", "fixed"),
        default="seed",
        help="the static task's subset placement: per seed (the protocol) or one for all",
    )
    parser.add_argument("--threads-max", type=int, default=2)
    parser.add_argument("--populations", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--profile-population", type=int, default=1024)
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument(
        "--single-stream-sampling",
        action="store_true",
        help="what-if: draw the population's batch in one RNG call (see SingleStreamSampling)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args(argv)
    if args.unit is not None:
        args.model = f"{args.unit}-{args.unit}"
    if args.smoke_test:
        args.populations, args.dims, args.seconds = [1, 8], [100, 2], 0.05
        args.profile_population, args.profile_steps = 8, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    SUBSET_OFFSET["value"] = args.subset_offset
    torch.set_num_threads(args.threads)
    report = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.smoke_test:
        ok = all(
            r["replica_steps_per_s"] > 0 and math.isfinite(r["ratio"]) for r in report["rows"]
        )
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
