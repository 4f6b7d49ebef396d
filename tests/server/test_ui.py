"""The dashboard (`/`) and the API docs (`/docs`), driven in a real headless Chromium.

Debian's `chromium` and `chromium-driver` (no browser download); selenium talks to
the driver. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import concurrent.futures
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.auth import generate_key, hash_key
from tests.conftest import ROOT, ServerFactory, require_binary, start_together

ARTIFACTS = ROOT / "test-artifacts"
KEY = generate_key()
CHROMIUM_FLAGS = (
    "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
    "--disable-background-networking --disable-component-update --disable-sync "
    "--no-first-run --window-size=1400,1000"
).split()


@pytest.fixture(scope="module")
def deployments(
    module_servers: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The showcase pipeline three times, started at once: as is, with auth on, and one
    to fill with 1,000 runs."""
    spec = "tests.ui_pipelines:showcase"
    auth = {"PIPESERVE_AUTH_KEY_HASHES": f"ui:{hash_key(KEY)}"}
    return start_together(
        module_servers,
        {
            name: (spec, [], {"PIPESERVE_HOME": str(tmp_path_factory.mktemp("h")), **env})
            for name, env in {"showcase": {}, "guarded": auth, "crowded": {}}.items()
        },
    )


@pytest.fixture
def showcase(deployments: dict[str, str]) -> str:
    return deployments["showcase"]


@pytest.fixture
def guarded(deployments: dict[str, str]) -> str:
    """The same pipeline with auth on."""
    return deployments["guarded"]


@pytest.fixture(scope="module")
def chrome() -> Iterator[webdriver.Chrome]:
    binary = require_binary("chromium", "chromium")
    driver_path = require_binary("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="pipeserve-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def browser(chrome: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    """The shared browser, with a clean session and an empty log for each test."""
    yield chrome
    chrome.get_log("browser")
    chrome.get("about:blank")
    chrome.delete_all_cookies()


def wait(driver: WebDriver, until: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(until)


def severe(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def loaded(driver: WebDriver) -> bool:
    return driver.execute_script("return document.body.dataset.loaded === 'true'") is True


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    try:
        saved = driver.save_screenshot(str(path))
    except TimeoutException:
        # chromedriver gives the renderer 10 s for a capture; a long page on a loaded
        # 2-core machine (the suite runs beside it) can take longer once. Try again.
        saved = driver.save_screenshot(str(path))
    assert saved
    return path


def click_until(driver: WebDriver, scope: str, button: str, shown: str) -> None:
    """Click `button` inside `scope` (CSS selectors) until `shown` appears there.

    While Swagger UI lays out, a click can land on an element still moving over the
    button, or on a button a re-render has just replaced: both are tried again, and the
    scope is looked up afresh each time for the same reason.
    """

    def attempt(d: WebDriver) -> bool:
        if d.find_elements(By.CSS_SELECTOR, f"{scope} {shown}"):
            return True
        buttons = d.find_elements(By.CSS_SELECTOR, f"{scope} {button}")
        if buttons:
            buttons[0].click()
        return bool(d.find_elements(By.CSS_SELECTOR, f"{scope} {shown}"))

    # Slow polling: a second click on a toggle that was only slow to render would undo it.
    WebDriverWait(
        driver,
        15,
        poll_frequency=1.0,
        ignored_exceptions=(ElementClickInterceptedException, StaleElementReferenceException),
    ).until(attempt)


def local_only(driver: WebDriver, origin: str) -> bool:
    """True if every resource the page loaded came from `origin`."""
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, "the page loaded nothing"
    return all(url.startswith(origin + "/") for url in urls)


def field(driver: WebDriver, name: str) -> WebElement:
    return driver.find_element(By.ID, f"param-{name}")


def outcome(driver: WebDriver) -> WebElement:
    return wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#outcome"))[0]  # type: ignore[no-any-return]


def invoke(driver: WebDriver) -> WebElement:
    """Click Invoke and wait for the new answer."""
    driver.execute_script("document.getElementById('result').replaceChildren()")
    driver.find_element(By.ID, "invoke-button").click()
    return outcome(driver)


# -- plain HTTP -------------------------------------------------------------------


def test_pages_and_assets_are_public_and_the_api_is_not(guarded: str) -> None:
    for path, kind in [
        ("/", "text/html"),
        ("/docs", "text/html"),
        ("/ui/dashboard.js", "text/javascript"),
        ("/ui/pipeserve.css", "text/css"),
        ("/ui/swagger/swagger-ui-bundle.js", "text/javascript"),
    ]:
        response = httpx.get(guarded + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
        assert response.headers["cache-control"] == "no-cache", path
    for path in ["/openapi.json", "/info", "/ui", "/uinfo", "/ui/../info", "/ui/%2e%2e/info"]:
        assert httpx.get(guarded + path).status_code in (401, 404), path
    assert httpx.get(guarded + "/info").status_code == 401
    assert httpx.get(guarded + "/ui/no-such-file.js").status_code == 404
    keyed = httpx.get(guarded + "/info", headers={"X-API-Key": KEY})
    assert keyed.status_code == 200


def test_openapi_declares_the_key_and_an_example_from_defaults(showcase: str) -> None:
    document = httpx.get(showcase + "/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert {"bearerAuth": []} in document["security"]
    assert document["paths"]["/ready"]["get"]["security"] == []
    body = document["paths"]["/invoke"]["post"]["requestBody"]["content"]["application/json"]
    # `text` has no default, so the example leaves it out.
    assert body["example"]["parameters"] == {
        "repeat": 2, "scale": 1.5, "shout": False, "mode": "fast", "colour": "green",
        "tags": ["a", "b"], "extra": {}, "note": None,
    }  # fmt: skip


def test_info_tells_uptime(showcase: str) -> None:
    info = httpx.get(showcase + "/info").json()
    assert info["uptime"] > 0
    assert info["started_at"].endswith("+00:00")


# -- the dashboard ----------------------------------------------------------------


def test_dashboard_shows_the_deployment_and_invokes_it(
    browser: webdriver.Chrome, showcase: str
) -> None:
    browser.get(showcase + "/")
    wait(browser, loaded)
    assert browser.find_element(By.ID, "deployment-name").text == "showcase"
    assert browser.find_element(By.ID, "pipeline-name").text == "showcase"
    assert browser.find_element(By.ID, "readiness").text == "ready"
    assert browser.find_element(By.ID, "uptime").text.endswith("s")
    info = httpx.get(showcase + "/info").json()
    assert browser.find_element(By.ID, "pipeline-version").text == info["version"]

    # The DAG: a node per step, an edge per edge, laid out left to right by level.
    nodes = {
        n.get_attribute("data-step"): n
        for n in browser.find_elements(By.CSS_SELECTOR, "#dag .node")
    }
    assert set(nodes) == {"prepare", "measure", "label", "combine"}
    x = {name: node.rect["x"] for name, node in nodes.items()}
    assert x["prepare"] < x["measure"] == x["label"] < x["combine"]
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"))
        for e in browser.find_elements(By.CSS_SELECTOR, "#dag .edge")
    }
    assert edges == {tuple(edge) for edge in info["edges"]}

    # A widget per parameter kind, filled with the defaults.
    assert field(browser, "text").get_attribute("type") == "text"
    assert field(browser, "repeat").get_attribute("type") == "number"
    assert field(browser, "repeat").get_attribute("value") == "2"
    assert field(browser, "scale").get_attribute("value") == "1.5"
    assert field(browser, "shout").get_attribute("type") == "checkbox"
    assert not field(browser, "shout").is_selected()
    mode = Select(field(browser, "mode"))
    assert [o.text for o in mode.options] == ["fast", "careful"]
    colour = Select(field(browser, "colour"))
    assert colour.first_selected_option.text == "green"
    assert json.loads(field(browser, "tags").get_attribute("value") or "") == ["a", "b"]
    assert field(browser, "extra").tag_name == "textarea"
    # Optional[str]: a text field; left empty, the parameter is left out (null by default).
    assert field(browser, "note").get_attribute("type") == "text"
    assert field(browser, "note").get_attribute("value") == ""

    field(browser, "text").send_keys("hey")
    field(browser, "repeat").clear()
    field(browser, "repeat").send_keys("3")
    field(browser, "shout").click()
    mode.select_by_visible_text("careful")
    colour.select_by_visible_text("red")
    field(browser, "extra").clear()
    field(browser, "extra").send_keys('{"n": 7}')
    answer = invoke(browser)
    assert "ok" in (answer.get_attribute("class") or "")
    outputs = json.loads(browser.find_element(By.ID, "outputs").text)
    assert outputs == {
        "echo": {
            "text": "HEY HEY HEY", "scale": 1.5, "mode": "careful", "colour": "red",
            "tags": ["a", "b"], "extra": {"n": 7}, "note": None,
        },
        "summary": "careful:red/11",
    }  # fmt: skip
    painted = browser.find_elements(By.CSS_SELECTOR, "#dag .node.step-completed")
    assert len(painted) == 4
    # The run is at the top of the runs list, with its parameters.
    run_id = browser.find_element(By.CSS_SELECTOR, ".run-id code").text
    row = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#runs tbody tr"))
    assert row.get_attribute("data-run-id") == run_id
    assert row.find_element(By.CLASS_NAME, "badge").text == "succeeded"
    assert '"text":"hey"' in (
        row.find_element(By.CLASS_NAME, "params").get_attribute("title") or ""
    )
    screenshot(browser, "dashboard.png")
    # The page loaded and invoked without one console or network error, and only from here.
    assert severe(browser) == []
    assert local_only(browser, showcase)


def test_dashboard_shows_a_failed_run_and_a_bad_request(
    browser: webdriver.Chrome, showcase: str
) -> None:
    browser.get(showcase + "/")
    wait(browser, loaded)
    field(browser, "text").send_keys("fail")
    answer = invoke(browser)
    assert "failed" in (answer.get_attribute("class") or "")
    assert answer.find_element(By.CLASS_NAME, "error-type").text == "ValueError"
    assert answer.find_element(By.CLASS_NAME, "error-step").text == "prepare"
    assert "asked to fail" in answer.find_element(By.CLASS_NAME, "error-message").text
    assert browser.find_elements(By.CSS_SELECTOR, "#dag .node.step-failed[data-step='prepare']")
    screenshot(browser, "dashboard-failed.png")

    # A missing required parameter: the server's 422 names the field.
    field(browser, "text").clear()
    answer = invoke(browser)
    assert answer.find_element(By.CLASS_NAME, "error-type").text == "validation_error"
    errors = browser.find_element(By.CLASS_NAME, "field-errors").text
    assert "parameters.text: Field required" in errors
    # Bad JSON in a JSON field is caught before anything is sent.
    field(browser, "text").send_keys("x")
    field(browser, "tags").clear()
    field(browser, "tags").send_keys("[1,")
    answer = invoke(browser)
    assert "'tags' is not valid JSON" in answer.text
    logged = severe(browser)
    assert [e["source"] for e in logged] == ["network", "network"], logged
    assert "/invoke" in logged[0]["message"] and "500" in logged[0]["message"]
    assert "422" in logged[1]["message"]


def test_dashboard_asks_for_the_key(browser: webdriver.Chrome, guarded: str) -> None:
    browser.get(guarded + "/")
    dialog = wait(browser, lambda d: d.find_element(By.ID, "key-dialog"))
    wait(browser, lambda d: dialog.is_displayed())
    assert "needs an API key" in browser.find_element(By.ID, "key-message").text
    browser.find_element(By.ID, "key-input").send_keys("psk_wrong")
    browser.find_element(By.ID, "key-submit").click()
    wait(browser, lambda d: "not accepted" in d.find_element(By.ID, "key-message").text)
    assert dialog.is_displayed()
    browser.find_element(By.ID, "key-input").send_keys(KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait(browser, loaded)
    assert not dialog.is_displayed()
    assert browser.find_element(By.ID, "deployment-name").text == "showcase"
    # The key is kept for this tab only.
    stored = browser.execute_script("return [sessionStorage.length, localStorage.length]")
    assert stored == [1, 0]
    assert KEY not in browser.execute_script("return document.cookie")
    field(browser, "text").send_keys("ok")
    assert "ok" in (invoke(browser).get_attribute("class") or "")
    screenshot(browser, "dashboard-auth.png")
    # Only the two refused requests were errors: no script error.
    logged = severe(browser)
    assert logged and all(e["source"] == "network" and "401" in e["message"] for e in logged)

    # The docs page of the same tab uses the key: no prompt, and "Try it out" sends it.
    # (A deep link opens the operation: no click that a re-render could swallow.)
    browser.get(guarded + "/docs#/default/info")
    wait(browser, loaded)
    assert browser.find_elements(By.ID, "key-dialog") == []
    block = "#operations-default-info"
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, block))
    click_until(browser, block, ".try-out__btn", ".execute")
    click_until(browser, block, ".execute", ".live-responses-table")
    answer = f"{block} .live-responses-table tbody"
    status = wait(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{answer} .response-col_status")
    )
    assert status[0].text.strip() == "200"
    shown = browser.find_element(By.CSS_SELECTOR, f"{answer} .microlight").text
    assert '"deployment_name": "showcase"' in shown
    assert severe(browser) == []

    # A new session opening the docs first: they ask for the key before they can render.
    browser.execute_script("sessionStorage.clear()")
    browser.get(guarded + "/docs")
    wait(browser, lambda d: d.find_element(By.ID, "key-dialog").is_displayed())
    assert browser.find_elements(By.CSS_SELECTOR, ".opblock") == []
    browser.find_element(By.ID, "key-input").send_keys(KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait(browser, loaded)
    assert wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))


# -- the docs ---------------------------------------------------------------------


def test_docs_render_offline_with_examples(browser: webdriver.Chrome, showcase: str) -> None:
    browser.get(showcase + "/docs#/default/invoke")
    wait(browser, loaded)
    operations = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
    paths = {o.find_element(By.CLASS_NAME, "opblock-summary-path").text for o in operations}
    assert {"/invoke", "/info", "/health", "/ready"} <= {p.replace("\u200b", "") for p in paths}
    assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")
    # The request example of /invoke is filled from the pipeline's defaults.
    block = browser.find_element(By.ID, "operations-default-invoke")
    example = wait(
        browser, lambda d: block.find_element(By.CSS_SELECTOR, ".body-param__example, .microlight")
    )
    assert '"mode": "fast"' in example.text and '"repeat": 2' in example.text
    # Nothing was fetched from anywhere but this server.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any("swagger-ui-bundle.js" in url for url in resources)
    assert local_only(browser, showcase), resources
    screenshot(browser, "docs.png")
    assert severe(browser) == []


def rows(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#runs tbody tr.run")


def test_runs_list_updates_live_and_shows_a_run(browser: webdriver.Chrome, showcase: str) -> None:
    browser.get(showcase + "/")
    wait(browser, loaded)
    # Runs started elsewhere (here: the API) show up without a reload.
    ok = httpx.post(showcase + "/runs", json={"parameters": {"text": "from-api"}}).json()
    failed = httpx.post(showcase + "/runs", json={"parameters": {"text": "fail"}}).json()
    row = wait(
        browser,
        lambda d: d.find_element(
            By.CSS_SELECTOR, f"#runs tr[data-run-id='{failed['run_id']}'].status-failed"
        ),
    )
    assert row.find_element(By.CLASS_NAME, "error").text == (
        "ValueError: asked to fail (step prepare)"
    )
    done = wait(
        browser,
        lambda d: d.find_element(
            By.CSS_SELECTOR, f"#runs tr[data-run-id='{ok['run_id']}'].status-succeeded"
        ),
    )
    assert [r.get_attribute("data-run-id") for r in rows(browser)[:2]] == [
        failed["run_id"],
        ok["run_id"],
    ]
    cells = [c.text for c in done.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "succeeded" and cells[1] == ok["run_id"][:8] and cells[2] == "batch"
    assert cells[4].endswith("ms") or cells[4].endswith(" s")
    # A click shows the run: its error and the step that raised it.
    row.click()
    answer = outcome(browser)
    assert answer.find_element(By.CLASS_NAME, "error-step").text == "prepare"
    assert browser.find_elements(By.CSS_SELECTOR, "#dag .node.step-failed[data-step='prepare']")
    done.click()
    wait(browser, lambda d: d.find_elements(By.ID, "outputs"))
    assert json.loads(browser.find_element(By.ID, "outputs").text)["echo"]["text"] == (
        "from-api from-api"
    )
    assert severe(browser) == []


@pytest.fixture(scope="module")
def crowded(deployments: dict[str, str]) -> str:
    """A deployment with 1,000 runs, one in a hundred failed."""
    url = deployments["crowded"]

    def invoke_many(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(offset, 1000, 4):
                text = "fail" if i % 100 == 0 else f"run-{i}"
                http.post("/invoke", json={"parameters": {"text": text}})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(invoke_many, range(4)))
    deadline = time.monotonic() + 10
    while len(httpx.get(url + "/runs?limit=500").json()["runs"]) < 500:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return url


def polls(driver: WebDriver) -> int:
    """How many times the page has fetched the newest page of runs (its poll)."""
    count = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.endsWith('/runs?limit=50')).length"
    )
    return int(count)


def test_dashboard_stays_usable_at_1000_runs(browser: webdriver.Chrome, crowded: str) -> None:
    browser.get(crowded + "/")
    wait(browser, loaded)
    # The newest 50 only; older ones a page at a time.
    assert len(rows(browser)) == 50
    more = browser.find_element(By.ID, "runs-more")
    assert more.is_displayed()
    more.click()
    wait(browser, lambda d: len(rows(d)) == 100)
    ids = [r.get_attribute("data-run-id") for r in rows(browser)]
    assert len(set(ids)) == 100
    every = httpx.get(crowded + "/runs?limit=100").json()["runs"]
    assert ids == [r["run_id"] for r in every]
    # Polling keeps the older pages, and leaves the table alone while nothing changes.
    browser.execute_script("window.firstRow = document.querySelector('#runs tbody tr');")
    polled = polls(browser)
    # Two more polls: the second is sent only once the first was answered and rendered.
    wait(browser, lambda d: polls(d) >= polled + 2)
    assert len(rows(browser)) == 100
    assert browser.execute_script(
        "return window.firstRow === document.querySelector('#runs tbody tr')"
    )
    # The status filter asks the server: the ten failed runs.
    Select(browser.find_element(By.ID, "runs-status")).select_by_visible_text("failed")
    wait(browser, lambda d: len(rows(d)) == 10)
    assert all("status-failed" in (r.get_attribute("class") or "") for r in rows(browser))
    assert not browser.find_element(By.ID, "runs-more").is_displayed()
    screenshot(browser, "dashboard-1000-runs.png")
    assert severe(browser) == []
