# syntax=docker/dockerfile:1
# The nalu-study image: every Ray node, the MLflow server, the dashboard and the launcher.
# Built on Ray's official image of the Ray version the project pins, so that every node of a
# cluster runs the same Ray and Python as the driver.
#
#   docker build -t nalu-study:0.1.0 .
#   docker build -t nalu-study:0.1.0-gpu --build-arg RAY_VARIANT=-gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# tests/test_compose.py checks that these pins equal the versions installed in the dev venv.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
# "" is Ray's CPU image; "-gpu" its CUDA image (then pass a CUDA TORCH_INDEX_URL too).
ARG RAY_VARIANT=

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${RAY_VARIANT}

ARG RAY_VERSION
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG MLFLOW_VERSION=3.17.2
ARG OPTUNA_VERSION=5.0.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

# Mount points owned by the image's user, so that fresh named volumes inherit the ownership.
USER root
RUN mkdir -p /data/studies /data/mlartifacts /data/mlflow-auth \
    && chown -R ray:users /data
USER ray

# torch first and from the PyTorch index, so that pip never resolves a default CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /home/ray/nalu-study
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users nalu_core ./nalu_core
COPY --chown=ray:users search_spaces ./search_spaces
COPY --chown=ray:users study ./study
COPY --chown=ray:users dashboards ./dashboards
# Ray is pinned to the base image's version; pip would otherwise be free to move it.
RUN pip install "ray[default,tune]==${RAY_VERSION}" "torch==${TORCH_VERSION}" \
        "mlflow==${MLFLOW_VERSION}" "optuna==${OPTUNA_VERSION}" . \
    && nalu-study --help > /dev/null

WORKDIR /home/ray
