"""The installed package (as in the Docker image) finds its migrations and catalog without the
source tree: build the wheel, unpack it alone on sys.path, migrate a database with it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.commands import environment_without_gateway, run, run_gateway

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
