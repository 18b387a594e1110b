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
