"""The installed package (as in the Docker image) finds its migrations and catalog without the
source tree, and carries its licence and PEP 561 marker: build the wheel, unpack it alone on
sys.path, migrate a database with it."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.commands import environment_without_gateway, run, run_gateway
from tests.support.database import create_postgres_database, drop_postgres_database

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_migrates_a_database_on_its_own(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("video_billing_gateway-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "gateway/_migrations/env.py" in names
    assert "gateway/catalog/models.json" in names
    assert "gateway/py.typed" in names  # PEP 561: type checkers read the installed package
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"  # name-version.dist-info
    licence = f"{dist_info}/licenses/LICENSE"
    assert licence in names, [name for name in names if ".dist-info/" in name]
    assert "Apache License" in (site / licence).read_text()
    metadata = (site / dist_info / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata

    database = tmp_path / "packaged.db"
    env = environment_without_gateway(
        PYTHONPATH=str(site),  # ahead of the editable install of the source tree
        GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
    )
    probe = (
        "import gateway, sys; from gateway.db.migrations import migrations_dir; "
        "from gateway.catalog.spec import load_catalog; "
        "print(gateway.__file__, migrations_dir(), load_catalog().model_ids())"
    )
    shown = run([sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True).stdout
    assert str(site / "gateway") in shown and "_migrations" in shown
    assert "grok-imagine-video-1-5" in shown
    upgraded = run_gateway("db", "upgrade", env=env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "(head)" in upgraded.stdout
    assert database.exists()


def test_dockerfile_runs_as_non_root_and_starts_serve() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0", "USER 0:0")
    assert 'ENTRYPOINT ["gateway"]' in lines
    assert any(line.startswith('CMD ["serve"') for line in lines)


def test_the_dockerfile_is_multi_stage_pinned_labelled_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build"), stages
    (image,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image  # an exact tag
    assert all(stage.split()[1] == "${PYTHON_IMAGE}" for stage in stages)
    assert "--no-index" in text  # the final stage installs built wheels only: no build tools
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    for label in ("title", "description", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text


def test_the_wheel_installs_into_a_fresh_venv_and_migrates_postgres(tmp_path: Path) -> None:
    """What the image's final stage does: install the built wheel and its dependencies (the
    pinned versions) into an empty environment, then run the command it ships."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), ROOT],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("video_billing_gateway-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = run(
        [venv / "bin" / "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", wheel],
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    gateway = str(venv / "bin" / "gateway")
    env = environment_without_gateway(PYTHONPATH="")
    shown = run([gateway, "--help"], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "serve" in shown.stdout and "db" in shown.stdout
    database = create_postgres_database(migrated=False)
    try:
        env["GATEWAY_DATABASE_URL"] = database
        upgraded = run([gateway, "db", "upgrade"], env=env, cwd=tmp_path, timeout=120)
        assert upgraded.returncode == 0, upgraded.stderr
        current = run([gateway, "db", "current"], env=env, cwd=tmp_path, timeout=120)
        assert "(at head)" in current.stdout, current.stdout + current.stderr
    finally:
        drop_postgres_database(database)
