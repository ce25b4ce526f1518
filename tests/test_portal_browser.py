"""The portal in a real browser: headless Chromium (Debian's, through its chromedriver, driven
by Selenium; nothing resolves but 127.0.0.1) against a real gateway on Postgres. A manager
signs in with a key, reads the overview, filters jobs, creates and revokes a key, signs out;
a member is refused; a second team's key never sees the first team's data. One browser for
the whole file (the CI budget is tight)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
import pytest

from gateway.app import create_app
from gateway.core.clock import utcnow
from tests.support.api import submit
from tests.support.portal import (
    ADMIN_TOKEN,
    PortalTeam,
    insert_jobs,
    key_states,
    make_portal_team,
    selenium_chromium,
)
from tests.support.servers import ServerThread, running
from tests.support.settings import gateway_settings

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Site:
    url: str
    database: str
    a: PortalTeam
    b: PortalTeam
    a_jobs: list[str]


@pytest.fixture(scope="module")
def site(postgres_url: str, simulator_server: ServerThread) -> Iterator[Site]:
    settings = gateway_settings(postgres_url, simulator_server.url, admin_token=ADMIN_TOKEN)
    with running(create_app(settings)) as server:
        a = make_portal_team(postgres_url, prefix="alpha")
        b = make_portal_team(postgres_url, prefix="bravo")
        now = utcnow()
        a_jobs = insert_jobs(
            postgres_url,
            a.team,
            [
                {
                    "at": now - timedelta(minutes=n),
                    "state": ("captured", "released", "submitted")[n % 3],
                    "project": ("atlas", None)[n % 2],
                    "tags": {"env": "prod"},
                }
                for n in range(12)
            ],
        )
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert submit(client, b.manager, "b's job", duration=2).status_code == 200
        yield Site(server.url, postgres_url, a, b, a_jobs)


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    with selenium_chromium() as browser:
        browser.implicitly_wait(0)
        yield browser


@pytest.fixture
def chrome(driver: WebDriver, site: Site) -> Iterator[WebDriver]:
    yield driver
    driver.get(site.url + "/portal/login")
    driver.delete_all_cookies()


def _by(css: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def _follow(driver: WebDriver, element: WebElement) -> None:
    """Click ``element`` and wait until the page it leads to has replaced this one (a click
    returns before the browser has navigated)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(*_by("html"))
    element.click()
    WebDriverWait(driver, 15).until(expected_conditions.staleness_of(page))


def _sign_in(driver: WebDriver, site: Site, key: str) -> None:
    driver.get(site.url + "/portal/login")
    driver.find_element(*_by("#api_key")).send_keys(key)
    _follow(driver, driver.find_element(*_by("#sign-in")))
    assert driver.current_url == site.url + "/portal/", driver.page_source[:500]


def _texts(driver: WebDriver, css: str) -> list[str]:
    return [element.text for element in driver.find_elements(*_by(css))]


def test_a_manager_reads_filters_creates_and_revokes_then_signs_out(
    chrome: WebDriver, site: Site
) -> None:
    from selenium.webdriver.support.select import Select

    _sign_in(chrome, site, site.a.manager.key)
    assert site.a.team in chrome.find_element(*_by("h1")).text
    scopes = [
        row.get_attribute("data-scope")
        for row in chrome.find_elements(*_by("#levels tr[data-scope]"))
    ]
    assert scopes == ["team", "project", "key"]
    assert chrome.find_elements(*_by("#daily-spend"))
    assert len(chrome.find_elements(*_by("#recent-jobs tr[data-job-id]"))) == 10

    _follow(chrome, chrome.find_element(*_by("nav a[href^='/portal/jobs']")))
    Select(chrome.find_element(*_by("#filter-state"))).select_by_value("released")
    Select(chrome.find_element(*_by("#filter-project"))).select_by_value("atlas")
    _follow(chrome, chrome.find_element(*_by("#apply-filters")))
    assert "state=released" in chrome.current_url and "project=atlas" in chrome.current_url
    states = _texts(chrome, "#jobs tr[data-job-id] .state")
    projects = _texts(chrome, "#jobs tr[data-job-id] td:nth-child(4)")
    assert states and set(states) == {"released"} and set(projects) == {"atlas"}

    _follow(chrome, chrome.find_element(*_by("nav a[href^='/portal/keys']")))
    form = chrome.find_element(*_by("#create-key"))
    form.find_element(*_by("input[name=name]")).send_keys("made in the browser")
    _follow(chrome, form.find_element(*_by("button[type=submit]")))
    secret = chrome.find_element(*_by("#new-key-secret")).text
    key_id = chrome.find_element(*_by("#new-key-id")).text
    assert secret.startswith("gwk_") and "shown only once" in chrome.page_source
    assert httpx.get(site.url + "/v1/usage", headers={"x-api-key": secret}).status_code == 200
    _follow(chrome, chrome.find_element(*_by("a[href^='/portal/keys']")))
    assert secret not in chrome.page_source
    _follow(chrome, chrome.find_element(*_by(f"tr[data-key-id='{key_id}'] button.danger")))
    status = chrome.find_element(*_by(f"tr[data-key-id='{key_id}'] td.status")).text
    assert status.startswith("revoked")
    assert key_states(site.database, site.a.team)[key_id] is True
    assert httpx.get(site.url + "/v1/usage", headers={"x-api-key": secret}).status_code == 401

    _follow(chrome, chrome.find_element(*_by("form[action='/portal/logout'] button")))
    assert chrome.current_url == site.url + "/portal/login"
    chrome.get(site.url + "/portal/keys")
    assert chrome.current_url == site.url + "/portal/login"


def test_a_member_is_refused(chrome: WebDriver, site: Site) -> None:
    _sign_in(chrome, site, site.a.member.key)
    chrome.get(site.url + "/portal/keys")
    assert chrome.find_elements(*_by("#read-only"))
    assert not chrome.find_elements(*_by("#create-key"))
    assert not chrome.find_elements(*_by("button.danger"))
    before = key_states(site.database, site.a.team)
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = chrome.find_element(*_by("html"))
    # What a crafted page would post: the member's own session and its valid CSRF token.
    chrome.execute_script(
        """
        const form = document.createElement('form');
        form.method = 'post';
        form.action = '/portal/keys/' + arguments[0] + '/revoke';
        const token = document.querySelector('input[name=csrf_token]').cloneNode();
        form.appendChild(token);
        document.body.appendChild(form);
        form.submit();
        """,
        site.a.manager.key_id,
    )
    WebDriverWait(chrome, 15).until(expected_conditions.staleness_of(page))
    assert "manager role" in chrome.find_element(*_by("#error-message")).text
    assert key_states(site.database, site.a.team) == before
    chrome.get(site.url + "/portal/admin")
    assert chrome.find_element(*_by("h1")).text == "Not allowed"


def test_a_second_teams_key_never_sees_the_first_teams_data(chrome: WebDriver, site: Site) -> None:
    _sign_in(chrome, site, site.b.member.key)
    seen = []
    for path in ("/portal/", "/portal/jobs", "/portal/keys", "/portal/reports"):
        chrome.get(site.url + path + f"?team={site.a.team}")
        seen.append(chrome.page_source)
    everything = "\n".join(seen)
    assert site.b.team in everything
    assert site.a.team not in everything
    assert site.a.manager.key_id not in everything and site.a.member.key_id not in everything
    assert not [job for job in site.a_jobs if job[:12] in everything]
    chrome.get(site.url + f"/portal/jobs/{site.a_jobs[0]}")
    assert chrome.find_element(*_by("h1")).text == "Not found"
