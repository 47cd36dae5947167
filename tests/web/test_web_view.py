"""The web view against `llfc serve` with auth on: the page and its two assets are served
without a key, and in headless Chromium the page asks for the key once, the jobs table lists jobs
(by what they compared) and refreshes by itself, and a finished job's page shows its plots
(fetched with the key) and metric tables and downloads its artifacts, plots and CSV. Against a
service with auth off the page offers no key.

The browser tests need Debian's `chromium` and `chromium-driver` and the `selenium` package;
they are skipped, with the reason, when those are missing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import load, save
from support.batch_norm import RESNET, trained_resnet_pair, with_wrong_running_statistics
from support.servers import serve

from llfc_results import AnalysisResult, analysis_csv

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


@pytest.fixture(scope="module")
def served_without_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`llfc serve` with auth off (the embedded default); its base URL."""
    data_dir = tmp_path_factory.mktemp("web-data-open")
    with serve(data_dir, [], data_dir / "serve.log", LLFC_AUTH="off") as running:
        yield running.base_url


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
    headers = browser.find_elements(By.CSS_SELECTOR, "#jobs-table thead th")
    assert [header.text for header in headers] == [
        "id", "kind", "compared", "method", "loss barrier", "status", "progress", "duration",
        "created",
    ]  # fmt: skip
    analysis = _wait_for_job(api, analyze_id)
    names = [
        api.get(f"/v1/checkpoints/{analysis[side]}").json()["name"]
        for side in ("model_a", "model_b")
    ]
    pairs = analysis["result"]["pairs"]
    barriers = [f"{pairs[pair]['lmc']['loss_barrier']:.3g}" for pair in ("naive", "matched")]
    seconds = (
        datetime.fromisoformat(analysis["finished_at"])
        - datetime.fromisoformat(analysis["started_at"])
    ).total_seconds()

    def analyze_cells(b: WebDriver) -> list[str] | None:
        row = b.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{analyze_id}"]')
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        # The models' names replace their ids once fetched.
        return cells if cells[2].startswith(names[0]) else None

    cells = _wait(browser, analyze_cells, "the jobs table did not name the models")
    assert cells[:6] == [
        analyze_id,
        "analyze",
        f"{names[0]} vs {names[1]} on builtin:digits",
        "weight matching",
        f"{barriers[0]} → {barriers[1]}",
        "succeeded",
    ]
    assert cells[6].startswith("100%")
    # The browser's clock reads milliseconds, so the last digit may round the other way.
    assert cells[7].endswith(" s") and float(cells[7][:-2]) == pytest.approx(seconds, abs=0.06)
    train_row = browser.find_element(
        By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{train_job["id"]}"]'
    )
    train_cells = [cell.text for cell in train_row.find_elements(By.TAG_NAME, "td")]
    assert train_cells[2:5] == ["2 × mlp on builtin:digits", "2 epochs", "—"]
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{analyze_id}"]')
    fill = row.find_element(By.CSS_SELECTOR, ".fill")
    assert fill.get_attribute("style") == "width: 100%;"
    # Auth is on: the page offers to set or forget the key.
    assert browser.find_element(By.ID, "key-status").get_attribute("data-auth") == "on"
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


def test_a_finished_sweep_job_page_shows_its_heat_map_and_matrices(
    served: ServedApp, api: httpx.Client, train_job: dict[str, Any], browser: WebDriver
) -> None:
    models = [artifact["checkpoint_id"] for artifact in train_job["artifacts"]]
    body = {**_analyze_body(train_job), "kind": "sweep", "models": models}
    del body["model_a"], body["model_b"]
    job = _run_job(api, body)
    browser.get(f"{served.base_url}/")
    browser.execute_script("sessionStorage.setItem('llfc.apiKey', arguments[0])", served.key)
    browser.get(f"{served.base_url}/jobs/{job['id']}")

    loaded = """
        const images = [...document.querySelectorAll('img.plot')];
        return images.length === 1 && images[0].complete && images[0].naturalWidth > 0;
    """
    _wait(browser, lambda b: b.execute_script(loaded), "the heat map did not load")
    [image] = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert image.get_attribute("data-plot") == "sweep"
    matrix = job["result"]["matrices"]["matched"]["loss_barrier"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#sweep-matched-loss_barrier tbody tr")
    cells = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    assert cells == [["0", f"{matrix[0][1]:.3g}"], [f"{matrix[1][0]:.3g}", "0"]]
    legend = browser.find_elements(By.CSS_SELECTOR, "#sweep-models li .model")
    assert [item.get_attribute("data-checkpoint-id") for item in legend] == models
    assert _policy_violations(browser) == []


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


def test_the_config_says_whether_a_key_is_needed_and_needs_none_itself(
    served: ServedApp, served_without_auth: str
) -> None:
    assert httpx.get(f"{served.base_url}/v1/config").json() == {"auth": True}
    assert httpx.get(f"{served_without_auth}/v1/config").json() == {"auth": False}


def test_the_result_csv_is_the_rows_of_the_analysis_and_only_of_an_analysis(
    served: ServedApp, api: httpx.Client, train_job: dict[str, Any]
) -> None:
    job = _run_job(api, _analyze_body(train_job))
    response = api.get(f"/v1/jobs/{job['id']}/result.csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="{job["id"]}.csv"'
    assert response.text == analysis_csv(AnalysisResult.from_json(job["result"]))
    lines = response.text.splitlines()
    assert lines[0] == "pair,metric,layer,alpha,value"
    naive_barrier = job["result"]["pairs"]["naive"]["lmc"]["loss_barrier"]
    assert f"naive,loss_barrier,,,{naive_barrier!r}" in lines

    not_analysis = api.get(f"/v1/jobs/{train_job['id']}/result.csv")
    assert not_analysis.status_code == 404
    assert "only analyze and sweep jobs have result rows" in not_analysis.json()["detail"]
    assert httpx.get(f"{served.base_url}/v1/jobs/{job['id']}/result.csv").status_code == 401


def _downloaded(browser: WebDriver, folder: Path, name: str) -> bytes:
    """The file Chromium saved as ``name`` in ``folder``, once complete."""
    path = folder / name
    _wait(
        browser,
        lambda _: path.is_file() and not list(folder.glob("*.crdownload")),
        f"Chromium did not save {name}",
    )
    return path.read_bytes()


def _png_links(browser: WebDriver) -> list[Any] | None:
    """The PNG link of each plot, once all three have loaded."""
    links = browser.find_elements(By.CSS_SELECTOR, "#plots figcaption a.download")
    return links if len(links) == 3 else None


@needs_selenium
@needs_chromium
def test_a_finished_job_page_downloads_its_csv_plots_and_artifacts(
    served: ServedApp,
    api: httpx.Client,
    train_job: dict[str, Any],
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    job = _run_job(api, _analyze_body(train_job))
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    browser.get(f"{served.base_url}/")
    browser.execute_script("sessionStorage.setItem('llfc.apiKey', arguments[0])", served.key)
    browser.get(f"{served.base_url}/jobs/{job['id']}")

    # The CSV, fetched with the key: the same bytes as the route's.
    link = _wait(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "#result-csv a.download"),
        "the job page offered no CSV",
    )[0]
    assert link.text == "download CSV"
    link.click()
    csv_text = api.get(f"/v1/jobs/{job['id']}/result.csv").content
    assert _downloaded(browser, tmp_path, f"{job['id']}.csv") == csv_text

    # Each plot has a PNG link once it has loaded.
    png_links = _wait(browser, _png_links, "the plots offered no PNG links")
    assert [a.get_attribute("download") for a in png_links] == [
        f"{job['id']}-{name}.png" for name in ("lmc", "llfc", "conditions")
    ]
    png_links[0].click()
    assert _downloaded(browser, tmp_path, f"{job['id']}-lmc.png").startswith(b"\x89PNG")

    # A train job's artifacts: its modes' tensors, the checkpoint files.
    browser.get(f"{served.base_url}/jobs/{train_job['id']}")
    artifact_links = _wait(
        browser,
        lambda b: b.find_elements(By.CSS_SELECTOR, "#artifacts a.download"),
        "the train job's page offered no artifact downloads",
    )
    assert len(artifact_links) == len(train_job["artifacts"])
    artifact_links[1].click()
    artifact = train_job["artifacts"][1]
    saved = _downloaded(browser, tmp_path, f"{train_job['id']}-{artifact['name']}.safetensors")
    served_file = api.get(f"/v1/checkpoints/{artifact['checkpoint_id']}/file").content
    assert saved == served_file
    assert sorted(load(saved)) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    assert _policy_violations(browser) == []


@needs_selenium
@needs_chromium
def test_without_auth_the_page_offers_no_api_key(
    served_without_auth: str, browser: WebDriver
) -> None:
    browser.get(f"{served_without_auth}/")
    status = browser.find_element(By.ID, "key-status")
    _wait(
        browser,
        lambda _: status.get_attribute("data-auth") == "off",
        "the page did not read the service's config",
    )
    assert status.text == ""
    assert not browser.find_element(By.ID, "key-panel").is_displayed()
    _wait(browser, lambda b: b.find_elements(By.ID, "no-jobs"), "the jobs view did not load")
    assert _policy_violations(browser) == []
