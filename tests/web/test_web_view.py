"""The web view against `llfc serve` with auth on: the page and its two assets are served
without a key, and in headless Chromium the page asks for the key once, the jobs table lists jobs
and refreshes by itself, and a finished analyze job's page shows its plots (fetched with the key)
and its metric tables.

The browser tests need Debian's `chromium` and `chromium-driver` and the `selenium` package;
they are skipped, with the reason, when those are missing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from batch_norm_testing import RESNET, trained_resnet_pair, with_wrong_running_statistics
from safetensors.torch import save
from servers import serve

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
WAIT_SECONDS = 60
MLP = {"name": "mlp", "widths": [64, 32, 32, 10]}

pytestmark = pytest.mark.slow
needs_selenium = pytest.mark.skipif(
    not HAVE_SELENIUM, reason="selenium is not installed (pip install -e '.[dev]')"
)
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="Chromium is not installed: apt-get install -y chromium chromium-driver",
)


@dataclass
class ServedApp:
    base_url: str
    key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    """`llfc serve` on a free port with a fresh data folder and auth on, and one owner's key."""
    data_dir = tmp_path_factory.mktemp("web-data")
    with serve(
        data_dir,
        ["web"],
        data_dir / "serve.log",
        LLFC_AUTH="on",
        LLFC_DEVICE="cpu",
        LLFC_WORKER_STOP_GRACE_SECONDS="2",
    ) as running:
        yield ServedApp(running.base_url, running.keys["web"])


def _run_job(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return _wait_for_job(http, response.json()["id"])


def _wait_for_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def _analyze_body(train_job: dict[str, Any]) -> dict[str, Any]:
    model_a, model_b = (artifact["checkpoint_id"] for artifact in train_job["artifacts"])
    return {
        "kind": "analyze",
        "model_a": model_a,
        "model_b": model_b,
        "dataset": "builtin:digits",
        "params": {"match": "weight", "split": "test", "max_examples": 200},
    }


@pytest.fixture(scope="module")
def api(served: ServedApp) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.base_url, headers=headers, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def train_job(api: httpx.Client) -> dict[str, Any]:
    body = {
        "kind": "train",
        "dataset": "builtin:digits",
        "params": {"arch": MLP, "epochs": 2, "seed": 5},
    }
    return _run_job(api, body)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # The console log, where Chromium reports whatever the Content-Security-Policy refused.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(browser: WebDriver, condition: Any, message: str) -> Any:
    return WebDriverWait(browser, WAIT_SECONDS).until(condition, message)


def _policy_violations(browser: WebDriver) -> list[str]:
    """Console messages since the last call about something the policy refused."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def _job_row_status(browser: WebDriver, job_id: str) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{job_id}"]')
    return rows[0].get_attribute("data-status") if rows else None


def test_the_page_and_its_assets_are_served_without_a_key(served: ServedApp) -> None:
    with httpx.Client(base_url=served.base_url) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/web/app.js" defer></script>' in page.text
        assert anonymous.get("/jobs/job_anything").text == page.text
        script = anonymous.get("/web/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "Authorization" in script.text
        assert anonymous.get("/web/style.css").headers["content-type"].startswith("text/css")
        # The data itself still needs the key.
        assert anonymous.get("/v1/jobs").status_code == 401


@pytest.mark.parametrize("asset", ["index.html", "missing.js", "..%2Fapi%2Fdeps.py", "app"])
def test_only_the_script_and_style_sheet_are_served_as_assets(
    served: ServedApp, asset: str
) -> None:
    response = httpx.get(f"{served.base_url}/web/{asset}")
    assert response.status_code == 404


@needs_selenium
@needs_chromium
def test_the_jobs_table_asks_for_the_key_once_then_lists_and_refreshes_jobs(
    served: ServedApp, api: httpx.Client, train_job: dict[str, Any], browser: WebDriver
) -> None:
    browser.get(f"{served.base_url}/")
    key_input = browser.find_element(By.ID, "key-input")
    _wait(browser, lambda _: key_input.is_displayed(), "the page did not ask for the API key")
    key_input.send_keys(served.key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    _wait(
        browser,
        lambda b: _job_row_status(b, train_job["id"]) == "succeeded",
        "the jobs table did not list the train job as succeeded",
    )
    # Kept for this tab only, never in localStorage, which every tab and later visit shares.
    assert browser.execute_script("return sessionStorage.getItem('llfc.apiKey')") == served.key
    assert browser.execute_script("return localStorage.length") == 0

    # A job submitted while the page is open appears and finishes there without a reload.
    submitted = api.post("/v1/jobs", json=_analyze_body(train_job))
    assert submitted.status_code == 202, submitted.text
    analyze_id = submitted.json()["id"]
    _wait(
        browser,
        lambda b: _job_row_status(b, analyze_id) == "succeeded",
        "the jobs table did not refresh to show the new job succeeded",
    )
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{analyze_id}"]')
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[:3] == [analyze_id, "analyze", "succeeded"]
    assert cells[3].startswith("100%")
    fill = row.find_element(By.CSS_SELECTOR, ".fill")
    assert fill.get_attribute("style") == "width: 100%;"
    assert _policy_violations(browser) == []


@needs_selenium
@needs_chromium
def test_a_finished_analyze_job_page_shows_its_plots_and_metric_tables(
    served: ServedApp,
    api: httpx.Client,
    train_job: dict[str, Any],
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    job = _run_job(api, _analyze_body(train_job))
    # The key is already in this tab's sessionStorage from the page visited before, or is put
    # there now when this test runs alone.
    browser.get(f"{served.base_url}/")
    browser.execute_script("sessionStorage.setItem('llfc.apiKey', arguments[0])", served.key)
    browser.get(f"{served.base_url}/jobs/{job['id']}")

    loaded = """
        const images = [...document.querySelectorAll('img.plot')];
        return images.length === 3 && images.every((i) => i.complete && i.naturalWidth > 0);
    """
    _wait(browser, lambda b: b.execute_script(loaded), "the plot images did not load")
    images = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert [image.get_attribute("data-plot") for image in images] == ["lmc", "llfc", "conditions"]
    for image in images:
        # Fetched with the Authorization header, so shown through an object URL.
        assert image.get_attribute("src").startswith("blob:")
        assert browser.execute_script("return arguments[0].naturalWidth", image) >= 800

    naive = job["result"]["pairs"]["naive"]
    matched = job["result"]["pairs"]["matched"]
    barriers = browser.find_element(By.ID, "barriers-table")
    headers = [cell.text for cell in barriers.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers == ["", "naive", "weight matching"]
    loss_row = barriers.find_elements(By.CSS_SELECTOR, "tbody tr")[0]
    assert [cell.text for cell in loss_row.find_elements(By.TAG_NAME, "td")] == [
        f"{naive['lmc']['loss_barrier']:.3g}",
        f"{matched['lmc']['loss_barrier']:.3g}",
    ]
    llfc_rows = browser.find_elements(By.CSS_SELECTOR, "#llfc-table tbody tr")
    assert [row.find_element(By.TAG_NAME, "th").text for row in llfc_rows] == naive["llfc"][
        "layers"
    ]
    # Per pair: the baseline, then one column per LLFC alpha.
    assert len(llfc_rows[0].find_elements(By.TAG_NAME, "td")) == 2 * (
        1 + len(naive["llfc"]["cos_alpha"])
    )
    condition_one = browser.find_elements(By.CSS_SELECTOR, "#condition-one-table tbody tr")
    assert len(condition_one) == len(naive["weak_additivity_layers"])
    condition_two = browser.find_elements(By.CSS_SELECTOR, "#condition-two-table tbody tr")
    assert len(condition_two) == len(naive["commutativity_layers"])

    assert _policy_violations(browser) == []

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, height + 100)
    screenshot = tmp_path / "job-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0


def test_every_answer_carries_the_content_security_policy(served: ServedApp) -> None:
    with httpx.Client(base_url=served.base_url) as anonymous:
        for path in ("/", "/docs", "/web/app.js", "/static/swagger-ui/swagger-ui.css", "/v1/jobs"):
            response = anonymous.get(path)
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy, path
            assert "frame-ancestors 'none'" in policy, path
            assert "script-src" not in policy, path  # scripts fall back to 'self' only
            assert response.headers["x-content-type-options"] == "nosniff", path


def test_the_docs_page_loads_nothing_from_outside_and_has_no_inline_script(
    served: ServedApp,
) -> None:
    with httpx.Client(base_url=served.base_url) as anonymous:
        page = anonymous.get("/docs")
        assert page.status_code == 200
        assert "http://" not in page.text and "https://" not in page.text
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.DOTALL)
        assert scripts, page.text
        for attributes, body in scripts:
            assert 'src="/' in attributes and not body.strip(), attributes
            source = re.search(r'src="([^"]+)"', attributes)
            assert source is not None
            assert anonymous.get(source.group(1)).status_code == 200, source.group(1)
        assert anonymous.get("/redoc").status_code == 404


@needs_selenium
@needs_chromium
def test_the_docs_page_renders_every_operation_under_the_policy(
    served: ServedApp, browser: WebDriver
) -> None:
    browser.get(f"{served.base_url}/docs")
    operations = len(httpx.get(f"{served.base_url}/openapi.json").json()["paths"])
    _wait(
        browser,
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= operations,
        "Swagger UI did not render the operations of /openapi.json",
    )
    assert "LLFC Align" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert _policy_violations(browser) == []


def _upload_safetensors(http: httpx.Client, state: dict[str, Any], name: str) -> str:
    file = (f"{name}.safetensors", save(state), "application/octet-stream")
    response = http.post(
        "/v1/checkpoints", files={"file": file}, data={"arch": json.dumps(RESNET), "name": name}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@needs_selenium
@needs_chromium
def test_a_batch_norm_analyze_job_page_shows_its_endpoints_re_estimated_and_as_uploaded(
    served: ServedApp, api: httpx.Client, browser: WebDriver
) -> None:
    _, state_a, state_b = trained_resnet_pair()
    model_a = _upload_safetensors(api, with_wrong_running_statistics(state_a), "wrong-stats-a")
    model_b = _upload_safetensors(api, state_b, "b")
    body = {
        "kind": "analyze",
        "model_a": model_a,
        "model_b": model_b,
        "dataset": "builtin:digits",
        "params": {"split": "test", "max_examples": 300},
    }
    job = _run_job(api, body)
    endpoints = job["result"]["endpoints"]
    assert endpoints["a"]["as_uploaded"]["error"] > endpoints["a"]["error"] + 0.3

    browser.get(f"{served.base_url}/")
    browser.execute_script("sessionStorage.setItem('llfc.apiKey', arguments[0])", served.key)
    browser.get(f"{served.base_url}/jobs/{job['id']}")
    table = _wait(
        browser,
        lambda b: b.find_elements(By.ID, "endpoints-table"),
        "the job page did not show the endpoints table",
    )[0]
    headers = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers == [
        "",
        "loss, BatchNorm re-estimated",
        "error, BatchNorm re-estimated",
        "loss as uploaded",
        "error as uploaded",
    ]
    for row, side in zip(table.find_elements(By.CSS_SELECTOR, "tbody tr"), "ab", strict=True):
        assert row.find_element(By.TAG_NAME, "th").text == f"model {side.upper()}"
        loss, error, loss_as_uploaded, error_as_uploaded = (
            cell.text for cell in row.find_elements(By.TAG_NAME, "td")
        )
        endpoint = endpoints[side]
        assert float(loss) == pytest.approx(endpoint["loss"], rel=5e-3)
        assert error == f"{100 * endpoint['error']:.1f}%"
        assert float(loss_as_uploaded) == pytest.approx(endpoint["as_uploaded"]["loss"], rel=5e-3)
        assert error_as_uploaded == f"{100 * endpoint['as_uploaded']['error']:.1f}%"
    assert _policy_violations(browser) == []
