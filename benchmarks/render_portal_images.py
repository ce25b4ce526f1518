"""The pictures of the portal in ``docs/`` (``portal-<page>.png``): each page as headless
Chromium shows it, with demo data. Re-run it after changing the portal's templates or CSS,
then look at every image.

    .venv/bin/python benchmarks/render_portal_images.py              # writes docs/portal-*.png
    .venv/bin/python benchmarks/render_portal_images.py --out /tmp/look

The data is made here, in a scratch PostgreSQL database (``--admin-url``), through the real
services and a real gateway in front of the built-in simulator: three teams with projects,
keys of both roles and budgets at every level; jobs submitted with cost-allocation tags and
polled to every outcome (completed, failed, moderated and billed), a few left running; then
(after the jobs, so no settlement fans out to them) webhook subscriptions and a delivery log
written as rows, and one subscription created through the form. Their URLs are public-looking
names that nothing here ever contacts: the gateway runs with
``GATEWAY_WEBHOOK_ALLOW_PRIVATE_NETWORKS`` on only so the form's create skips its DNS check,
and no delivery is ever due (the log's pending row is due in an hour).
Chromium is Debian's, driven by Selenium, resolving no host but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import scratch_database  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.core.clock import utcnow  # noqa: E402
from gateway.jobs.models import Job  # noqa: E402
from gateway.tenancy import service  # noqa: E402
from gateway.upstream.simulator import SimulatorConfig, create_simulator_app  # noqa: E402
from tests.support.api import submit  # noqa: E402
from tests.support.database import migrate  # noqa: E402
from tests.support.portal import (  # noqa: E402
    ADMIN_TOKEN,
    add_webhook,
    insert_deliveries,
    selenium_chromium,
)
from tests.support.servers import running  # noqa: E402
from tests.support.settings import gateway_settings  # noqa: E402
from tests.support.simulator import UPSTREAM_KEY  # noqa: E402
from tests.support.tenants import PEPPER, TEST_ACTOR, Tenant, in_session  # noqa: E402

TEAMS = {  # team: (budget USD, soft limit %, {project: budget USD or None})
    "brand-studio": (1_500, 80, {"spring-campaign": 600, "social-cutdowns": None}),
    "mobile-app": (400, 50, {"onboarding": 120}),
    "research-video-models": (None, None, {}),
}
PROMPTS = [
    ("hero shot of the new sneaker, slow orbit", "campaign=spring,channel=tv", {"duration": 8}),
    ("15 s cutdown for stories #sim:duration=12", "campaign=spring,channel=social", {}),
    ("logo sting, 720p", "channel=web", {"duration": 5, "resolution": "720p"}),
    ("product on a beach #sim:fail", "campaign=spring", {"duration": 6}),
    ("crowd at a festival #sim:moderated", "channel=social", {"duration": 4}),
    ("a lighthouse at dusk", "channel=tv", {"duration": 10}),
]


def _seed(database: str) -> dict[str, Tenant]:
    async def _create(session: AsyncSession) -> dict[str, Tenant]:
        keys = {}
        for team, (budget, soft, projects) in TEAMS.items():
            await service.create_team(
                session,
                team,
                actor=TEST_ACTOR,
                cost_center="CC-1040 Marketing" if team == "brand-studio" else "CC-2210 Product",
                monthly_budget_micro_usd=budget * 1_000_000 if budget else None,
                soft_limit_percent=soft,
            )
            for project, project_budget in projects.items():
                await service.create_project(
                    session,
                    team,
                    project,
                    actor=TEST_ACTOR,
                    monthly_budget_micro_usd=project_budget * 1_000_000 if project_budget else None,
                )
            first_project = next(iter(projects), None)
            manager = await service.create_key(
                session,
                team,
                pepper=PEPPER,
                actor=TEST_ACTOR,
                name="team lead",
                role="manager",
                project=first_project,
                monthly_budget_micro_usd=250_000_000 if first_project else None,
            )
            await service.create_key(
                session, team, pepper=PEPPER, actor=TEST_ACTOR, name="render-farm-ci"
            )
            editing = await service.create_key(
                session,
                team,
                pepper=PEPPER,
                actor=TEST_ACTOR,
                name="editing-suite",
                project=list(projects)[-1] if projects else None,
            )
            keys[team] = Tenant(team, manager.token, manager.key.id)
            keys[f"{team}/editing"] = Tenant(team, editing.token, editing.key.id)
        return keys

    return in_session(database, _create)


def _submit_jobs(url: str, keys: dict[str, Tenant]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for team, key in keys.items():
            for round_ in range(3 if team.startswith("brand-studio") else 1):
                for index, (prompt, tags, fields) in enumerate(PROMPTS):
                    answer = submit(client, key, prompt, headers={"X-Gateway-Tags": tags}, **fields)
                    assert answer.status_code == 200, answer.text
                    if (round_ + index) % 7 != 3:  # a few stay open: held, not yet polled
                        job = answer.json()["job_id"]
                        client.get(f"/v1/jobs/{job}", headers=key.headers).raise_for_status()


def _seed_webhooks(database: str, keys: dict[str, Tenant]) -> str:
    """Two subscriptions of brand-studio and the first one's delivery log (delivered, pending
    after errors, given up); the first one's id."""
    team, lead = "brand-studio", keys["brand-studio"]

    async def _jobs(session: AsyncSession) -> list[str]:
        stmt = select(Job.id).order_by(Job.created_at.desc()).limit(9)
        return list((await session.execute(stmt)).scalars())

    jobs = in_session(database, _jobs)
    main = add_webhook(
        database,
        team,
        "https://hooks.video-lab.example/gateway?token=not-shown",
        created_by=f"portal:{lead.key_id}",
    )
    add_webhook(
        database,
        team,
        "https://finance.brand-studio.example/alerts/video-budget",
        events=("budget.soft_limit", "budget.exhausted"),
    )
    now = utcnow()
    ago = [now - timedelta(minutes=m) for m in (212, 180, 151, 95, 64, 40, 22, 9, 2)]
    ok = {"state": "delivered", "attempts": 1, "last_status_code": 200}
    specs = [
        {**ok, "type": "job.succeeded", "last_attempt_at": ago[0]},
        {**ok, "type": "job.succeeded", "last_attempt_at": ago[1]},
        {
            "state": "failed",
            "type": "job.failed",
            "attempts": 12,
            "last_status_code": 410,
            "last_error": "HTTP 410",
            "last_attempt_at": ago[2] - timedelta(hours=20),
            "event_at": ago[2] - timedelta(hours=24),
        },
        {**ok, "type": "job.moderated", "last_attempt_at": ago[3]},
        {
            **ok,
            "type": "job.succeeded",
            "attempts": 3,
            "last_status_code": 204,
            "last_error": "timed out after 10 s",
            "last_attempt_at": ago[4],
        },
        {**ok, "type": "job.failed", "last_attempt_at": ago[5]},
        {
            "state": "pending",
            "type": "job.succeeded",
            "attempts": 4,
            "last_status_code": 503,
            "last_error": "HTTP 503",
            "last_attempt_at": ago[8],
            "next_attempt_at": now + timedelta(hours=1),
        },
        {
            "state": "pending",
            "type": "budget.soft_limit",
            "attempts": 2,
            "last_error": "ConnectError",
            "last_attempt_at": ago[8],
            "next_attempt_at": now + timedelta(minutes=55),
            "event_id": "evt_alert_3",
        },
    ]
    for spec, job, at in zip(specs, jobs, ago, strict=False):
        spec.setdefault("event_id", f"evt_job_{job}")
        spec.setdefault("event_at", at - timedelta(seconds=4))
    insert_deliveries(database, team, main, specs)
    return main


def _shoot(driver: object, url: str, path: Path) -> None:
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(driver, WebDriver)
    driver.set_window_size(1280, 900)
    driver.get(url)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    # The window includes the browser's own bars (~290 px in the new headless mode).
    driver.set_window_size(1280, min(max(int(height), 600), 2400) + 290)
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def render(admin_url: str, out: Path) -> None:
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    simulator = create_simulator_app(SimulatorConfig(api_key=UPSTREAM_KEY))
    with scratch_database(admin_url) as database, running(simulator) as upstream:
        migrate(database)
        keys = _seed(database)
        settings = gateway_settings(
            database, upstream.url, admin_token=ADMIN_TOKEN, webhook_allow_private_networks=True
        )
        with running(create_app(settings)) as gateway, selenium_chromium() as driver:
            _submit_jobs(gateway.url, keys)
            base = gateway.url
            _shoot(driver, base + "/portal/login", out / "portal-login.png")
            driver.find_element(By.ID, "api_key").send_keys(keys["brand-studio"].key)
            driver.find_element(By.ID, "sign-in").click()
            _shoot(driver, base + "/portal/", out / "portal-overview.png")
            _shoot(driver, base + "/portal/jobs", out / "portal-jobs.png")
            job = driver.find_element(By.CSS_SELECTOR, "#jobs tr[data-job-id]")
            job_id = job.get_attribute("data-job-id")
            _shoot(driver, f"{base}/portal/jobs/{job_id}", out / "portal-job.png")
            _shoot(driver, base + "/portal/keys", out / "portal-keys.png")
            form = driver.find_element(By.ID, "create-key")
            form.find_element(By.NAME, "name").send_keys("storyboard-tool")
            form.find_element(By.NAME, "monthly_budget_usd").send_keys("75")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            driver.save_screenshot(str(out / "portal-key-created.png"))
            print(f"wrote {out / 'portal-key-created.png'}")
            _shoot(driver, base + "/portal/reports", out / "portal-reports.png")
            hook = _seed_webhooks(database, keys)
            _shoot(driver, base + "/portal/webhooks", out / "portal-webhooks.png")
            _shoot(driver, f"{base}/portal/webhooks/{hook}", out / "portal-webhook-deliveries.png")
            driver.get(base + "/portal/webhooks")
            form = driver.find_element(By.ID, "create-webhook")
            form.find_element(By.NAME, "url").send_keys(
                "https://render-queue.brand-studio.example/webhooks/video?key=not-shown"
            )
            for box in form.find_elements(By.CSS_SELECTOR, "input[value^='budget.']"):
                box.click()  # job events only
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            driver.save_screenshot(str(out / "portal-webhook-created.png"))
            print(f"wrote {out / 'portal-webhook-created.png'}")
            driver.delete_all_cookies()
            driver.get(base + "/portal/login")
            driver.find_element(By.ID, "admin_token").send_keys(ADMIN_TOKEN)
            driver.find_element(By.ID, "sign-in").click()
            _shoot(driver, base + "/portal/admin", out / "portal-admin.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    render(args.admin_url, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
