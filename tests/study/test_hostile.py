"""Hostile input: exit code 2, one line naming the field or path, no traceback, nothing written.

Each case runs the real command line (typer's runner, in this process) against real files
and, where a store is involved, the real PostgreSQL. None of them starts Ray: every refusal
comes before it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from search_spaces._yaml import MAX_NODES, YamlTooLargeError, load_yaml
from study import InvalidSpecError, SpecError, parse_spec, redact
from study._export import safe_filename, write_export
from study._studies import open_storage, study_status
from study.cli._app import _load_plugins, app

SPEC: dict[str, Any] = {
    "name": "hostile",
    "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
    "space": "quick",
    "training": {"seeds": 2, "steps": 200, "eval_every": 100},
    "budget": {"num_samples": 1},
    "sampler": {"name": "random", "seed": 1},
    "pruner": "none",
}
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, list(args), env=env or {})
    assert "Traceback" not in result.output, result.output
    return result


def refused(result: Any, field: str) -> list[str]:
    """The error lines of a refused command; each is ``error: <field>: <message>``."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert lines, result.output
    assert any(line.startswith(f"error: {field}: ") for line in lines), (field, result.output)
    return lines


def spec_file(tmp_path: Path, **changes: Any) -> Path:
    data = {**SPEC, **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- sizes, seeds, names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"budget": {"num_samples": 10**30}}, "budget.num_samples"),
        ({"budget": {"num_samples": 1e30}}, "budget.num_samples"),
        ({"training": {**SPEC["training"], "seeds": 10**9}}, "training.seeds"),
        (
            {"tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 10**9}}]},
            "tasks[0].options.input_size",
        ),
        ({"resources": {"cpus": 1e9}}, "resources.cpus"),
        ({"resources": {"cpus": 1000}}, "resources.cpus"),  # more than this machine has
        ({"sampler": {"name": "tpe", "seed": 2**40}}, "sampler.seed"),
        ({"name": "trailing\n"}, "name"),
        ({"name": "../outside"}, "name"),
    ],
)
def test_absurd_values_are_refused_before_anything_is_written(
    tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    work = tmp_path / "work"
    result = run("launch", str(spec_file(tmp_path, **changes)), "--workdir", str(work))
    lines = refused(result, field)
    assert len(lines) == 1, result.output
    assert len(lines[0]) < 400
    assert not work.exists()
    assert not (tmp_path / "outside").exists()


def test_name_option_with_a_newline_is_refused(tmp_path: Path) -> None:
    result = run("launch", str(spec_file(tmp_path)), "--name", "x\n", "--workdir", str(tmp_path))
    refused(result, "name")
    assert not (tmp_path / "x\n").exists()


def test_a_spec_with_several_errors_lists_them_all(tmp_path: Path) -> None:
    bad = {
        **SPEC,
        "name": "bad name",
        "budget": {"num_samples": 0},
        "sampler": {"name": "tpe", "seed": -1},
        "pruner": "sometimes",
    }
    with pytest.raises(InvalidSpecError) as caught:
        parse_spec(bad)
    fields = [e.field for e in caught.value.errors]
    assert fields == ["name", "budget.num_samples", "sampler.seed", "pruner.name"]
    lines = refused(run("launch", str(spec_file(tmp_path, **bad))), "name")
    assert [line.split(":")[1].strip() for line in lines] == fields


def test_a_yaml_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntasks: [\n")
    lines = refused(run("launch", str(path)), "spec")
    assert str(path) in lines[0] and "<unicode string>" not in lines[0]
    space = tmp_path / "space.yaml"
    space.write_text("parameters: {lr: [1, 2\n")
    lines = refused(run("spaces", "validate", str(space)), str(space))
    assert "not valid YAML" in lines[0]


# --- YAML alias bombs --------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_before_it_is_built() -> None:
    # 9^9 (387 million) leaves; building it would take gigabytes and minutes
    with pytest.raises(YamlTooLargeError, match=f"more than {MAX_NODES} nodes"):
        load_yaml(BOMB)
    with pytest.raises(YamlTooLargeError):
        load_yaml("a: &a [*a]")  # an alias of itself
    assert load_yaml("a: &x [1, 2]\nb: *x\nc: 1e-4") == {"a": [1, 2], "b": [1, 2], "c": 1e-4}


def test_alias_bombs_in_a_spec_or_a_space_exit_2_with_one_short_line(tmp_path: Path) -> None:
    spec = tmp_path / "bomb.yaml"
    spec.write_text(BOMB + "name: bomb\n")
    lines = refused(run("launch", str(spec), "--workdir", str(tmp_path / "w")), "spec")
    assert len(lines) == 1 and len(lines[0]) < 400
    space = tmp_path / "space-bomb.yaml"
    space.write_text(BOMB.replace("a: &a", "parameters: {}\nz: &a"))
    lines = refused(run("spaces", "validate", str(space)), str(space))
    assert len(lines[0]) < 500
    # a bomb one level below the limit: its repr in an error message stays short too
    small = "a: &a [xxxxxxxxxx, xxxxxxxxxx, xxxxxxxxxx, xxxxxxxxxx]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 4)}]\n"
        for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    spec.write_text(small + "name: small\ntasks: *g\n")
    lines = refused(run("launch", str(spec), "--workdir", str(tmp_path / "w")), "tasks[0]")
    assert all(len(line) < 400 for line in lines)
    assert not (tmp_path / "w").exists()


# --- the workdir: ../ names, corrupt records, commands that only read -------------------------


def make_record(folder: Path, **fields: Any) -> Path:
    folder.mkdir(parents=True)
    record = {
        "name": folder.name,
        "created": "2026-01-01T00:00:00+00:00",
        "status": "finished",
        "tasks": ["static-add"],
        "launches": [],
        "elapsed_s": 1.0,
        "budget": {"num_samples": 1, "time_limit": None},
        "settings": {"storage": f"sqlite:///{folder / 'optuna.db'}"},
        **fields,
    }
    (folder / "study.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("command", ["status", "resume", "export"])
def test_names_that_leave_the_workdir_are_refused(tmp_path: Path, command: str) -> None:
    make_record(tmp_path / "outside")  # a study next to the workdir, not in it
    work = tmp_path / "work"
    work.mkdir()
    for name in ("../outside", "..", "/etc", "a/b"):
        refused(run(command, name, "--workdir", str(work)), "name")
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["study.json"]


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"name": 3}', '{"name": "bad", "launches": 7}', "\x00\xff"],
)
def test_a_corrupt_record_is_named_and_list_shows_the_other_studies(
    tmp_path: Path, content: str
) -> None:
    make_record(tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_bytes(content.encode("latin-1"))
    record = str(tmp_path / "bad" / "study.json")
    lines = refused(run("status", "bad", "--workdir", str(tmp_path)), record)
    assert len(lines) == 1 and lines[0].count(record) == 1
    refused(run("resume", "bad", "--workdir", str(tmp_path)), record)
    listed = run("list", "--workdir", str(tmp_path), "--json")
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.output)}
    assert rows["good"]["status"] == "finished"
    assert rows["bad"]["status"] == "corrupt" and rows["bad"]["error"]
    table = run("list", "--workdir", str(tmp_path))
    assert table.exit_code == 0 and "good" in table.output and "corrupt" in table.output


def test_status_creates_no_store(tmp_path: Path, postgres_url: str) -> None:
    folder = make_record(tmp_path / "fresh")
    result = run("status", "fresh", "--workdir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["study.json"]
    # a database with no Optuna tables yet keeps none
    status = study_status(folder, storage_url=postgres_url)
    assert status.finished == 0
    plain = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    import sqlalchemy

    engine = sqlalchemy.create_engine(plain)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_export_of_an_unknown_study_creates_no_store(tmp_path: Path) -> None:
    refused(run("export", "nosuch", "--workdir", str(tmp_path)), "name")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    trained = run("train", "--steps", "100000000", "--json", str(blocker / "out.json"))
    lines = refused(trained, "--json")
    assert "is a file" in lines[0] and "success rate" not in trained.output  # trained nothing
    make_record(tmp_path / "s", settings={"tracking_uri": "sqlite:////nonexistent/m.db"})
    exported = run("export", "s", "--workdir", str(tmp_path), "--out", str(blocker / "x"))
    refused(exported, "name")  # the missing store is found first; now an existing one:
    (tmp_path / "m.db").write_bytes(b"")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    exported = run("export", "s", "--tracking-uri", uri, "--out", str(blocker / "x"))
    refused(exported, "out")
    assert (tmp_path / "m.db").read_bytes() == b""


def test_train_refuses_sizes_this_machine_cannot_hold() -> None:
    result = run("train", "--input-size", "1000000000", "--steps", "10")
    lines = refused(result, "--input-size")
    assert "GiB" in lines[0] and "success rate" not in result.output


# --- stores: unreachable, plain URLs, passwords ---------------------------------------------


def test_an_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://optuna:hunter2-secret@127.0.0.1:1/optuna"
    work = tmp_path / "work"
    result = run("launch", str(spec_file(tmp_path)), "--storage", url, "--workdir", str(work))
    lines = refused(result, "storage")
    assert "hunter2-secret" not in result.output and "optuna:***@" in lines[0]
    assert not work.exists()
    make_record(tmp_path / "s", settings={"storage": url})
    status = run("status", "s", "--workdir", str(tmp_path), "--json")
    assert status.exit_code == 2 and "hunter2" not in status.output
    assert json.loads(status.output)["errors"][0]["field"] == "storage"


def test_the_plain_postgresql_url_works_for_optuna_and_mlflow(
    make_postgres_db: Callable[[], str], tmp_path: Path
) -> None:
    """``postgresql://user@host/db`` (what README, compose and docs/cluster.md write) maps to
    psycopg 3 in SQLAlchemy 2.1; both stores open with it."""
    optuna_url = make_postgres_db().replace("postgresql+psycopg2://", "postgresql://")
    mlflow_url = make_postgres_db().replace("postgresql+psycopg2://", "postgresql://")
    storage = open_storage(optuna_url)
    assert storage.engine.dialect.driver == "psycopg"
    study = optuna.create_study(study_name="plain.static-add", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
    assert len(optuna.load_study(study_name="plain.static-add", storage=optuna_url).trials) == 1
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.create_experiment("plain", artifact_location=str(tmp_path / "a"))
    run_id = client.create_run(experiment).info.run_id
    client.log_metric(run_id, "success_rate", 0.5)
    got = MlflowClient(tracking_uri=mlflow_url).get_run(run_id)
    assert got.data.metrics == {"success_rate": 0.5}


def test_redact_hides_every_password_in_a_text() -> None:
    text = (
        "postgresql://optuna:s3cr%40t@db:5432/optuna and http://u:p@mlflow:5000/x, "
        "sqlite:////abs/optuna.db, postgresql://postgres@127.0.0.1/optuna"
    )
    assert redact(text) == (
        "postgresql://optuna:***@db:5432/optuna and http://u:***@mlflow:5000/x, "
        "sqlite:////abs/optuna.db, postgresql://postgres@127.0.0.1/optuna"
    )


def test_credentials_never_reach_a_dashboard_error_body(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dashboards import Dashboard, create_app

    uri = "http://viewer:hunter2-secret@127.0.0.1:1"
    dash = Dashboard(uri, storage="postgresql://o:hunter3-secret@127.0.0.1:1/x", ttl=0.0)
    client = TestClient(create_app(dash), raise_server_exceptions=False)
    for path in ("/api/studies", "/", "/studies/x", "/api/studies/x/leaderboard"):
        response = client.get(path)
        assert response.status_code >= 400, path
        assert "hunter" not in response.text, (path, response.text[:500])


# --- export file names, inline chart JSON ------------------------------------------------------


def test_export_file_names_stay_inside_out(tmp_path: Path, sqlite_tracking_uri: Any) -> None:
    from mlflow import MlflowClient

    from nalu_core import RunConfig, TaskConfig

    uri = sqlite_tracking_uri(tmp_path / "store")
    client = MlflowClient(uri)
    experiment = client.create_experiment("crafted", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(
        experiment, tags={"nalu.role": "trial", "nalu.state": "COMPLETE"}
    ).info.run_id
    client.log_param(run_id, "task", "../../../escaped")
    client.log_param(run_id, "op", "add")
    client.log_metric(run_id, "success_lower", 0.5)
    config = RunConfig(task=TaskConfig(name="static", op="add")).to_dict()
    client.log_text(run_id, yaml.safe_dump(config), "config.yaml")
    out = tmp_path / "deep" / "out"
    written = write_export(uri, "crafted", fmt="yaml", out=out)
    assert [p.parent for p in written] == [out]
    assert written[0].name.endswith("escaped_add.yaml") and ".." not in written[0].name
    assert not list(tmp_path.glob("**/escaped*"))
    assert safe_filename("..", ".yaml") == "_.yaml" and "/" not in safe_filename("a/b", "")


def test_inline_chart_json_survives_html_comment_openers() -> None:
    from dashboards import _pages as pages

    hostile = "<!--<script>alert(1)</script>"
    html = pages.plot("p", {"data": [{"name": hostile}], "layout": {}})
    script = html.split("<script>", 1)[1].rsplit("</script>", 1)[0]
    assert "<" not in script  # no "<!--", no "</script" inside the element
    payload = script.split("var f=", 1)[1].split(";Plotly", 1)[0]
    assert json.loads(payload)["data"][0]["name"] == hostile


# --- one command-line convention ------------------------------------------------------------


def _commands() -> dict[str, Any]:
    import typer

    if not any(c.name == "dashboard" for c in app.registered_commands):
        _load_plugins()
    root = typer.main.get_command(app)
    found: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = command

    walk(root, "")
    return found


def test_every_option_has_help_and_no_flag_is_doubled() -> None:
    missing, doubled = [], []
    for name, command in _commands().items():
        for param in command.params:
            if param.param_type_name == "option" and not (param.help or "").strip():
                missing.append(f"{name} {param.opts[0]}")
            for opt in (*param.opts, *getattr(param, "secondary_opts", ())):
                if opt.startswith("--no-no-"):
                    doubled.append(f"{name} {opt}")
    assert missing == [] and doubled == [], (missing, doubled)
    assert "--no-snapshot" in {o for p in _commands()["dashboard"].params for o in p.opts}


@pytest.mark.parametrize("command", [["list"], ["status", "x"], ["spaces", "list"]])
def test_json_output_is_json(tmp_path: Path, command: list[str]) -> None:
    if command[0] == "status":
        make_record(tmp_path / "x")
    args = [*command, "--json"] + ([] if command[0] == "spaces" else ["--workdir", str(tmp_path)])
    result = run(*args)
    assert result.exit_code == 0, result.output
    json.loads(result.output)


def test_spec_errors_are_study_errors_naming_their_field() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec({**SPEC, "sampler": {"name": "tpe", "seed": 2**32}})
    assert caught.value.field == "sampler.seed"
    assert os.sep not in str(caught.value.field)
