from __future__ import annotations

import subprocess
import sys


def _modules_after_import(package: str) -> set[str]:
    code = f"import sys, {package}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_nalu_core_imports_no_service_library() -> None:
    assert not _modules_after_import("nalu_core") & {"ray", "optuna", "mlflow"}


def test_search_spaces_imports_no_ray_or_mlflow() -> None:
    assert not _modules_after_import("search_spaces") & {"ray", "mlflow"}


def test_the_gpu_checks_collect_without_the_study_stack() -> None:
    """benchmarks/gpu_check.sh runs ``pytest -m gpu tests/nalu_core`` on a CUDA image that has
    torch but no Ray, MLflow or Optuna: collecting those tests must import none of them."""
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-m', 'gpu',"
        " 'tests/nalu_core'])\n"
        "print('\\n'.join(sys.modules))\n"
        "sys.exit(int(rc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:]
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    assert not loaded & {"ray", "optuna", "mlflow", "study"}
