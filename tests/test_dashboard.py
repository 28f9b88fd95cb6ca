"""The operator dashboard (GET /) driven in headless Chromium against a real
3-process cluster: members with their leader, the key browser (listing,
edit, create, delete, checked through etcdctl) and the live view of an SSE
watch (a change made with etcdctl shows up without a reload).

Needs Debian's ``chromium`` and ``chromium-driver`` (installed by .ci/run),
the ``selenium`` package (the ``test`` extra) and ``etcdctl``
(``etcd-client``); skipped with the reason otherwise. The browser runs with
a fresh profile in a temporary directory and with its background network
traffic off (the machine's network is closed); it and the cluster are
stopped by PID.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest

from tests.procs import Cluster

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMEDRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
ETCDCTL = shutil.which("etcdctl")

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None

WAIT = 30.0  # generous: the suite may run on a loaded machine

need_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl (Debian etcd-client) is not installed")
need_browser = pytest.mark.skipif(
    webdriver is None or CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser tests need Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them) and the selenium package (pip install -e '.[test]')",
)


# ------------------------------------------------------------------ helpers
def etcdctl(cluster: Cluster, *args: str) -> str:
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run(
        [ETCDCTL, "--endpoints", ",".join(cluster.endpoints), "--command-timeout=10s", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )
    if p.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p.stdout


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_until(pred: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            v = pred()
        except (AssertionError, StaleElementReferenceException) as e:
            v, last = None, e
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f" (last: {last})" if last else ""))
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--window-size=1440,1100",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log_path = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log_path))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        pid = service.process.pid if service.process is not None else None
        try:
            driver.quit()
        except WebDriverException:
            pass
        if pid is not None:  # chromedriver (and with it the browser) by PID, if quit left it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """Script errors and CSP violations logged since the last call (an HTTP
    error status the page handles, e.g. a refused edit's 412, is logged too:
    left out)."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]]


def open_page(driver, cluster: Cluster, query: str = "") -> None:
    driver.get(cluster.nodes[0].http_url + "/" + query)
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.readyState") == "complete")


def key_rows(driver) -> dict[str, Any]:
    return {tr.get_attribute("data-key"): tr for tr in driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr[data-key]")}


def cells(tr) -> list[str]:
    return [td.text for td in tr.find_elements(By.TAG_NAME, "td")]


def new_key(driver, key: str, value: str) -> None:
    """Fill in and save the "New key" form (its key field starts with the prefix)."""
    driver.find_element(By.ID, "new-key").click()
    box = driver.find_element(By.ID, "edit-key")
    box.clear()
    box.send_keys(key)
    driver.find_element(By.ID, "edit-value").send_keys(value)
    driver.find_element(By.ID, "edit-save").click()


def browse(driver, prefix: str) -> None:
    box = driver.find_element(By.ID, "browse-prefix")
    box.clear()
    box.send_keys(prefix)
    driver.find_element(By.ID, "browse-go").click()


# ---------------------------------------------------------- without a browser
def test_page_and_cluster_endpoint(cluster: Cluster):
    """The page and its files are served (package data), and the cluster
    endpoint reports every member's own Status."""
    base = cluster.nodes[1].http_url
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        html = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert "/dashboard/static/app.js" in html and "/dashboard/static/style.css" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from elsewhere
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        with urllib.request.urlopen(f"{base}/dashboard/static/{name}", timeout=10) as r:
            assert r.headers["Content-Type"].startswith(ctype)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/dashboard/static/missing.js", timeout=10)
    assert e.value.code == 404

    body = wait_until(lambda: (lambda b: b if all(m["status"] for m in b["members"]) else None)(
        get_json(base + "/dashboard/api/cluster")), "every member's status")
    assert len(body["members"]) == 3
    assert body["leader"] in {m["id"] for m in body["members"]}
    assert body["member_id"] in {m["id"] for m in body["members"]}
    assert {m["name"] for m in body["members"]} == {"n1", "n2", "n3"}
    for m in body["members"]:
        st = m["status"]
        assert st["raft_term"] >= 1 and st["raft_index"] >= 1 and st["db_size"] > 0
        assert m["alarms"] == [] and m["error"] is None


# --------------------------------------------------------------- the browser
@need_browser
@need_etcdctl
class TestDashboard:
    def test_members(self, cluster: Cluster, browser):
        open_page(browser, cluster)
        rows = wait_until(
            lambda: (lambda rs: rs if len(rs) == 3 and all(r.get_attribute("data-health") == "healthy" for r in rs) else None)(
                browser.find_elements(By.CSS_SELECTOR, "#members tbody tr[data-member-id]")),
            "3 healthy members in the table",
        )
        leaders = [r for r in rows if r.get_attribute("data-leader") == "true"]
        assert len(leaders) == 1
        assert "Leader" in leaders[0].text
        # The leader shown is the one etcdctl reports.
        st = json.loads(etcdctl(cluster, "endpoint", "status", "-w", "json"))
        leader_id = format(st[0]["Status"]["leader"], "x")
        assert leaders[0].get_attribute("data-member-id") == leader_id
        names = [r.find_element(By.CSS_SELECTOR, ".member-name").text for r in rows]
        assert names == ["n1", "n2", "n3"]
        for r in rows:
            c = cells(r)
            assert int(c[3]) >= 1 and int(c[4]) >= 1 and int(c[5]) >= 1  # term, index, applied
            assert c[6].endswith("B") or "iB" in c[6]  # DB size
            assert c[7] == "none"  # alarms
        assert console_errors(browser) == []

    def test_key_browser_lists_etcdctl_puts(self, cluster: Cluster, browser):
        etcdctl(cluster, "put", "/app/config/db", "postgres://db:5432")
        etcdctl(cluster, "put", "/app/config/mode", "production")
        etcdctl(cluster, "put", "/app/feature/dark", "on")
        etcdctl(cluster, "put", "/other/x", "not listed")
        open_page(browser, cluster)
        browse(browser, "/app/")
        rows = wait_until(lambda: (lambda r: r if len(r) == 3 else None)(key_rows(browser)), "3 keys under /app/")
        assert set(rows) == {"/app/config/db", "/app/config/mode", "/app/feature/dark"}
        got = json.loads(etcdctl(cluster, "get", "/app/config/db", "-w", "json"))["kvs"][0]
        c = cells(rows["/app/config/db"])
        assert c[0] == "/app/config/db" and c[1] == "postgres://db:5432"
        assert (int(c[2]), int(c[3]), int(c[4])) == (got["create_revision"], got["mod_revision"], got["version"])
        assert "3 keys under" in browser.find_element(By.ID, "keys-summary").text
        assert browser.current_url.endswith("?prefix=%2Fapp%2F")

    def test_edit_in_page_is_seen_by_etcdctl(self, cluster: Cluster, browser, tmp_path):
        open_page(browser, cluster, "?prefix=/app/")
        rows = wait_until(lambda: (lambda r: r if "/app/config/mode" in r else None)(key_rows(browser)), "the key listed")
        rows["/app/config/mode"].find_element(By.CSS_SELECTOR, "button.edit").click()
        dialog = browser.find_element(By.ID, "edit-dialog")
        wait_until(dialog.is_displayed, "the edit dialog")
        assert browser.find_element(By.ID, "edit-key").get_attribute("value") == "/app/config/mode"
        value = browser.find_element(By.ID, "edit-value")
        assert value.get_attribute("value") == "production"
        value.clear()
        value.send_keys("maintenance ✓")
        browser.find_element(By.ID, "edit-save").click()
        wait_until(lambda: not dialog.is_displayed(), "the dialog to close")
        wait_until(lambda: etcdctl(cluster, "get", "/app/config/mode", "--print-value-only").strip() == "maintenance ✓",
                   "etcdctl to read the edited value")
        wait_until(lambda: cells(key_rows(browser)["/app/config/mode"])[1] == "maintenance ✓", "the row updated")
        assert cells(key_rows(browser)["/app/config/mode"])[4] == "2"  # version

    def test_edit_of_a_stale_listing_is_refused(self, cluster: Cluster, browser):
        open_page(browser, cluster, "?prefix=/app/")
        rows = wait_until(lambda: (lambda r: r if "/app/feature/dark" in r else None)(key_rows(browser)), "the key listed")
        etcdctl(cluster, "put", "/app/feature/dark", "changed elsewhere")  # after the page listed it
        rows["/app/feature/dark"].find_element(By.CSS_SELECTOR, "button.edit").click()
        value = browser.find_element(By.ID, "edit-value")
        value.clear()
        value.send_keys("from the page")
        browser.find_element(By.ID, "edit-save").click()
        err = browser.find_element(By.ID, "edit-error")
        wait_until(lambda: "changed since it was listed" in err.text, "the conflict message")
        browser.find_element(By.ID, "edit-cancel").click()
        assert etcdctl(cluster, "get", "/app/feature/dark", "--print-value-only").strip() == "changed elsewhere"

    def test_create_and_delete_in_page(self, cluster: Cluster, browser):
        open_page(browser, cluster, "?prefix=/app/")
        wait_until(lambda: "/app/config/db" in key_rows(browser), "the listing")
        browser.find_element(By.ID, "new-key").click()
        key = browser.find_element(By.ID, "edit-key")
        assert key.get_attribute("value") == "/app/"  # prefilled with the prefix
        key.send_keys("created/in page")
        browser.find_element(By.ID, "edit-value").send_keys("hello")
        browser.find_element(By.ID, "edit-save").click()
        wait_until(lambda: etcdctl(cluster, "get", "/app/created/in page", "--print-value-only").strip() == "hello",
                   "etcdctl to read the created key")
        wait_until(lambda: "/app/created/in page" in key_rows(browser), "the created key listed")

        # Delete asks for a second click on the same button.
        btn = key_rows(browser)["/app/config/db"].find_element(By.CSS_SELECTOR, "button.delete")
        btn.click()
        assert btn.text == "Confirm delete"
        assert etcdctl(cluster, "get", "/app/config/db", "--print-value-only").strip() == "postgres://db:5432"
        btn.click()
        wait_until(lambda: etcdctl(cluster, "get", "/app/config/db").strip() == "", "etcdctl to find the key gone")
        wait_until(lambda: "/app/config/db" not in key_rows(browser), "the row gone")
        assert console_errors(browser) == []

    def test_live_view_shows_etcdctl_changes_without_reload(self, cluster: Cluster, browser, tmp_path):
        open_page(browser, cluster, "?prefix=/app/")
        box = browser.find_element(By.ID, "watch-prefix")
        box.clear()
        box.send_keys("/app/")
        browser.find_element(By.ID, "watch-toggle").click()
        wait_until(lambda: browser.find_element(By.ID, "live-state").text == "live", "the watch to connect")
        browser.execute_script("window.__noReload = 'still here'")

        etcdctl(cluster, "put", "/app/live/one", "first")
        etcdctl(cluster, "put", "/other/ignored", "outside the prefix")
        etcdctl(cluster, "put", "/app/live/two", "second")
        etcdctl(cluster, "del", "/app/live/one")

        def events():
            return [(li.get_attribute("data-type"), li.get_attribute("data-key"))
                    for li in browser.find_elements(By.CSS_SELECTOR, "#live li[data-key]")]

        wait_until(lambda: len(events()) >= 3, "three events in the live view")
        assert events() == [("DELETE", "/app/live/one"), ("PUT", "/app/live/two"), ("PUT", "/app/live/one")]
        top = browser.find_element(By.CSS_SELECTOR, "#live li[data-key]")
        rev = json.loads(etcdctl(cluster, "get", "/app/live/two", "-w", "json"))["header"]["revision"]
        assert top.get_attribute("data-revision") == str(rev)
        assert browser.execute_script("return window.__noReload") == "still here"

        # A look at the whole page (kept in the test's tmp dir).
        browse(browser, "/app/")
        wait_until(lambda: "/app/live/two" in key_rows(browser), "the listing")
        shot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        assert console_errors(browser) == []

    def test_narrow_screen(self, cluster: Cluster, browser, tmp_path):
        """On a phone-sized window the page has no sideways scrolling of the
        whole page (wide tables scroll inside their box)."""
        try:
            browser.set_window_size(420, 900)
            open_page(browser, cluster, "?prefix=/app/")
            wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#members tbody tr[data-member-id]")) == 3,
                       "the members")
            wait_until(lambda: key_rows(browser), "the keys")
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1
            browser.save_screenshot(str(tmp_path / "dashboard-narrow.png"))
        finally:
            browser.set_window_size(1440, 1100)

    def test_member_down_is_shown(self, cluster: Cluster, browser):
        """(Last: it stops a member.) A killed member turns unreachable in
        the table on the next refresh; the other two stay healthy."""
        open_page(browser, cluster)
        wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#members tr[data-health=healthy]")) == 3,
                   "3 healthy members")
        browser.execute_script("window.__noReload = 1")
        victim = cluster.nodes[2]
        victim.kill()

        def health() -> dict[str, str]:
            return {r.find_element(By.CSS_SELECTOR, ".member-name").text: r.get_attribute("data-health")
                    for r in browser.find_elements(By.CSS_SELECTOR, "#members tbody tr[data-member-id]")}

        wait_until(lambda: health().get(victim.name) == "unreachable", "the killed member shown unreachable")
        assert health() == {"n1": "healthy", "n2": "healthy", "n3": "unreachable"}
        row = browser.find_element(By.CSS_SELECTOR, "#members tr[data-health=unreachable]")
        assert [c for c in cells(row)[3:7]] == ["–", "–", "–", "–"]
        assert browser.execute_script("return window.__noReload") == 1
        assert console_errors(browser) == []


# ------------------------------------------------------- one-member clusters
def etcdctl_run(cluster: Cluster, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(
        [ETCDCTL, "--endpoints", ",".join(cluster.endpoints), "--command-timeout=10s", *args],
        capture_output=True, text=True, timeout=60, env=env, input=input,
    )


@need_browser
@need_etcdctl
def test_alarm_is_shown(browser, tmp_path):
    """A member with a tiny quota raises NOSPACE: the members table shows
    the alarm and the page says so in its banner; a write from the page
    fails with the server's message."""
    c = Cluster(1, extra_args=["--quota-backend-bytes", str(4 << 20)])
    try:
        c.start(timeout=60)
        blob = b"x" * (512 << 10)
        for i in range(40):
            req = urllib.request.Request(f"{c.nodes[0].http_url}/kv/fill/{i % 4}", data=blob, method="PUT")
            try:
                urllib.request.urlopen(req, timeout=30).close()
            except urllib.error.HTTPError as e:
                assert e.code == 503, e.read()
                break
        else:
            raise AssertionError("NOSPACE was never raised")
        open_page(browser, c)
        row = wait_until(
            lambda: (lambda rs: rs[0] if len(rs) == 1 and rs[0].get_attribute("data-health") == "alarm" else None)(
                browser.find_elements(By.CSS_SELECTOR, "#members tbody tr[data-member-id]")),
            "the member shown with its alarm",
        )
        assert "NOSPACE" in row.find_element(By.CSS_SELECTOR, "td.alarms").text
        banner = browser.find_element(By.ID, "banner")
        wait_until(lambda: "NOSPACE" in banner.text, "the alarm banner")
        browser.find_element(By.ID, "new-key").click()
        browser.find_element(By.ID, "edit-key").send_keys("more")
        browser.find_element(By.ID, "edit-value").send_keys("v")
        browser.find_element(By.ID, "edit-save").click()
        err = browser.find_element(By.ID, "edit-error")
        wait_until(lambda: "database space exceeded" in err.text, "the write refused")
        browser.save_screenshot(str(tmp_path / "dashboard-alarm.png"))
        browser.find_element(By.ID, "edit-cancel").click()
        assert console_errors(browser) == []
    finally:
        c.close()


@need_browser
@need_etcdctl
def test_sign_in_when_auth_is_enabled(browser):
    """With auth enabled, a refused write opens the sign-in form; signing in
    gets a token from /v3/auth/authenticate and the page sends it. Tolerant
    of an auth implementation still under way: skipped if auth cannot be
    enabled, and if the HTTP API does not honour the token yet."""
    c = Cluster(1)
    try:
        c.start()
        for args in (("user", "add", "root:pw"), ("user", "grant-role", "root", "root"), ("auth", "enable")):
            p = etcdctl_run(c, *args)
            if p.returncode != 0:
                pytest.skip(f"auth cannot be enabled on this build: etcdctl {' '.join(args)}: {p.stderr.strip()}")
        open_page(browser, c)
        browser.execute_script("sessionStorage.clear()")
        open_page(browser, c)
        login = browser.find_element(By.ID, "login-dialog")
        summary = browser.find_element(By.ID, "keys-summary")
        # Reads refused without a token open the form at once; else a write does.
        wait_until(lambda: login.is_displayed() or summary.text, "the listing or the sign-in form")
        write_pending = not login.is_displayed()
        if write_pending:
            new_key(browser, "/secret/x", "s3cr3t")
            wait_until(login.is_displayed, "the sign-in form")
        browser.find_element(By.ID, "login-name").send_keys("root")
        browser.find_element(By.ID, "login-password").send_keys("wrong")
        browser.find_element(By.ID, "login-submit").click()
        wait_until(lambda: browser.find_element(By.ID, "login-error").text, "the refusal of a wrong password")
        assert login.is_displayed()
        pw = browser.find_element(By.ID, "login-password")
        pw.clear()
        pw.send_keys("pw")
        browser.find_element(By.ID, "login-submit").click()
        wait_until(lambda: browser.find_element(By.ID, "auth-user").text == "Signed in as root", "signed in")
        assert not login.is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('kvstore.token')")

        if write_pending:
            browser.find_element(By.ID, "edit-save").click()  # the form is still open: save again
        else:
            wait_until(lambda: summary.text.startswith("0 keys"), "the listing, signed in")
            new_key(browser, "/secret/x", "s3cr3t")
        dialog = browser.find_element(By.ID, "edit-dialog")
        err = browser.find_element(By.ID, "edit-error")
        wait_until(lambda: not dialog.is_displayed() or "Not allowed" in err.text, "the saved write or a refusal")
        if dialog.is_displayed():
            pytest.skip(f"the HTTP API does not accept the token yet: {err.text}")
        p = etcdctl_run(c, "--user", "root:pw", "get", "/secret/x", "--print-value-only")
        assert p.stdout.strip() == "s3cr3t", p.stderr

        browser.find_element(By.ID, "logout").click()
        assert browser.execute_script("return sessionStorage.getItem('kvstore.token')") is None
        wait_until(lambda: browser.find_element(By.ID, "login-open").is_displayed(), "signed out")
    finally:
        browser.execute_script("sessionStorage.clear()")
        for d in browser.find_elements(By.CSS_SELECTOR, "dialog[open]"):
            browser.execute_script("arguments[0].close()", d)
        c.close()
