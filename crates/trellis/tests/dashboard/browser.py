#!/usr/bin/env python3
"""The dashboard's browser checks (run by crates/trellis/tests/dashboard.rs against a running
`trellis up examples/mesh.yaml` under load): headless Debian chromium driven by chromedriver
through Selenium. Every wait is bounded; nothing asserts on how fast anything is.

Environment: DASH_BASE (control plane URL), DASH_TOKEN, DASH_OUTBOUND (entry sidecar),
DASH_ENTRY_ADMIN (its admin port), DASH_SHOTS (screenshot folder), DASH_WORK, TRELLIS_BIN.
"""
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["DASH_BASE"]
TOKEN = os.environ["DASH_TOKEN"]
OUTBOUND = os.environ["DASH_OUTBOUND"]
ENTRY_ADMIN = os.environ["DASH_ENTRY_ADMIN"]
SHOTS = os.environ["DASH_SHOTS"]
WORK = os.environ["DASH_WORK"]
TRELLIS = os.environ["TRELLIS_BIN"]
ENTRY = "default/trellis-up-entry"


def log(*a):
    print(*a, flush=True)


def status_of(path, headers=None):
    req = urllib.request.Request(BASE + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def call(service, path="/"):
    req = urllib.request.Request(f"http://{OUTBOUND}{path}", headers={"Host": service})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def entry_counts(service):
    """The entry sidecar's own count of its calls to `service`: (requests, failures)."""
    with urllib.request.urlopen(f"http://{ENTRY_ADMIN}/metrics", timeout=10) as r:
        text = r.read().decode()
    requests = failures = 0
    for line in text.splitlines():
        if not line.startswith("trellis_requests_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        if 'direction="outbound"' not in labels or f'service="{service}"' not in labels:
            continue
        n = int(float(value))
        requests += n
        if 'classification="failure"' in labels:
            failures += n
    return requests, failures


def apply(name, text):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(text)
    env = dict(os.environ, TRELLIS_CONTROL=BASE, TRELLIS_TOKEN=TOKEN)
    out = subprocess.run([TRELLIS, "apply", "-f", path], env=env, capture_output=True,
                         text=True, timeout=60)
    log(f"trellis apply -f {name}: {out.returncode} {out.stdout.strip()} {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr


def shot(driver, name):
    path = os.path.join(SHOTS, name)
    driver.save_screenshot(path)
    log("screenshot", path)


def go(driver, hash_):
    """In-page navigation (the same document: no reload)."""
    driver.execute_script("location.hash = arguments[0]", hash_)


ATTRS = """
const e = document.querySelector(arguments[0]);
if (!e) return null;
const o = {};
for (const a of e.attributes) o[a.name] = a.value;
const p = e.querySelector('path');
o.stroke = p ? getComputedStyle(p).stroke : null;
return o;
"""


def attrs(driver, selector):
    """An element's attributes (and its path's stroke), read at once: the graph is redrawn
    every 2 s, so an element found first and read later may be gone."""
    return driver.execute_script(ATTRS, selector)


def edge(driver, src, dst):
    return attrs(driver, f'g.edge[data-from="{src}"][data-to="{dst}"]')


def node(driver, id_):
    return attrs(driver, f'g.node[data-id="{id_}"]')


ROUTE_5050 = """apiVersion: trellis.dev/v1
kind: Route
metadata:
  name: reviews
spec:
  service: reviews
  rules:
    - name: canary-header
      matches:
        - headers:
            - name: x-canary
              value: always
      backends:
        - service: reviews
          subset: v2
    - name: split
      backends:
        - service: reviews
          subset: v1
          weight: 50
        - service: reviews
          subset: v2
          weight: 50
      timeout: 2s
"""

RATINGS_OUTLIERS = """apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata:
  name: ratings
spec:
  service: ratings
  outlierDetection:
    consecutive5xxErrors: 2
    baseEjectionTime: 60s
    maxEjectionPercent: 50
"""

RATINGS_FAULT = """apiVersion: trellis.dev/v1
kind: Route
metadata:
  name: ratings
spec:
  service: ratings
  rules:
    - name: chaos
      timeout: 3s
      fault:
        abort:
          httpStatus: 503
          percent: 100
"""


def refused_without_a_session():
    for path in ["/dashboard/", "/dashboard/?token=wrong", "/dashboard/?code=made-up"]:
        code, body = status_of(path)
        assert code == 401 and 'name="token"' in body, (path, code, body[:200])
    for path in ["/dashboard/api/topology", "/dashboard/api/status",
                 "/dashboard/api/events", "/dashboard/api/services/default/reviews",
                 "/dashboard/api/tap?service=reviews"]:
        code, body = status_of(path)
        assert code == 401, (path, code, body[:200])
        code, _ = status_of(path, {"Cookie": "trellis_dashboard=forged"})
        assert code == 401, (path, "forged cookie", code)
    code, body = status_of("/dashboard/api/topology", {"Authorization": "Bearer " + TOKEN})
    assert code == 200 and '"nodes"' in body, (code, body[:200])
    log("ok: every dashboard page and endpoint refuses a caller without a session (401)")


def main():
    refused_without_a_session()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1500,1000", "--hide-scrollbars"]:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    wait = WebDriverWait(driver, 60, poll_frequency=0.5)
    try:
        run(driver, wait)
    finally:
        driver.quit()
    log("ALL CHECKS PASSED")


def run(driver, wait):
    # The login page, then the join token typed into it.
    driver.get(BASE + "/dashboard/")
    assert driver.find_elements(By.ID, "token"), "a login form"
    assert not driver.find_elements(By.ID, "graph"), "no dashboard before login"
    shot(driver, "login.png")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(lambda d: d.find_elements(By.ID, "graph"))
    cookie = driver.get_cookie("trellis_dashboard")
    assert cookie and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict", cookie
    log("ok: logged in; the session cookie is HttpOnly and SameSite=Strict")

    # Topology: the services and the entry sidecar, and its calls to reviews (under load).
    wait.until(lambda d: edge(d, ENTRY, "default/reviews") is not None)
    for n in ["default/reviews", ENTRY]:
        assert node(driver, n), n
    # ratings has had no traffic yet: hidden until asked for.
    assert not node(driver, "default/ratings")
    driver.find_element(By.ID, "show-idle").click()
    wait.until(lambda d: node(d, "default/ratings"))
    driver.find_element(By.ID, "show-idle").click()
    reviews = node(driver, "default/reviews")
    assert reviews["data-instances"] == "3", reviews
    log("ok: topology shows reviews, ratings and the entry sidecar, and the edge entry -> reviews")

    # An edge's numbers are the callers' sidecars' counts: a burst to ratings, which had no
    # traffic before, so the 60 s window holds all of it.
    sent = 120
    for _ in range(sent):
        call("ratings")
    requests, failures = entry_counts("ratings")
    log(f"entry sidecar /metrics: {requests} requests to ratings, {failures} failed")
    assert requests == sent, (requests, sent)

    def matches(d):
        e = edge(d, ENTRY, "default/ratings")
        return e is not None and e["data-requests"] == str(requests)
    wait.until(matches)
    e = edge(driver, ENTRY, "default/ratings")
    shown_failures = int(e["data-failures"])
    success = float(e["data-success"])
    assert shown_failures == failures, (shown_failures, failures)
    assert abs(success - (1 - failures / requests)) < 1e-9, (success, failures, requests)
    assert float(e["data-rps"]) > 0
    log(f"ok: edge entry -> ratings shows {requests} requests, {shown_failures} failed, "
        f"success {success:.4f}: what the sidecar's /metrics counts")
    time.sleep(2.5)
    shot(driver, "topology.png")

    # An instance that outlier detection ejects shows on its node (ratings fails 20%).
    apply("ratings-outliers.yaml", RATINGS_OUTLIERS)
    stop = threading.Event()

    def ratings_load():
        for _ in range(3000):
            if stop.is_set():
                return
            call("ratings")
            time.sleep(0.01)
    t = threading.Thread(target=ratings_load, daemon=True)
    t.start()
    try:
        wait.until(lambda d: int((node(d, "default/ratings") or {}).get("data-ejected") or 0) >= 1)
    finally:
        stop.set()
        t.join(timeout=15)
    problems = driver.find_element(By.ID, "problems").text
    assert "ejected" in problems, problems
    log("ok: an instance of ratings ejected by the entry sidecar's outlier detection shows")
    time.sleep(2.5)
    shot(driver, "topology-ejected.png")

    # A route change appears without a reload.
    driver.execute_script("window.__noReload = 'still here';")
    go(driver, "#/service/default/reviews")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'span[data-backend="v1"][data-percent="90"]'))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#svc-instances tbody tr")) == 3)
    shot(driver, "service-before.png")
    apply("route-5050.yaml", ROUTE_5050)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'span[data-backend="v2"][data-percent="50"]'))
    assert driver.execute_script("return window.__noReload") == "still here", "the page reloaded"
    log("ok: the route change (90/10 -> 50/50) appeared without a reload")
    shot(driver, "service-after-route-change.png")

    # A fault turns the edge red.
    stop = threading.Event()

    def ratings_load():
        for _ in range(2000):
            if stop.is_set():
                return
            call("ratings")
            time.sleep(0.05)
    t = threading.Thread(target=ratings_load, daemon=True)
    t.start()
    try:
        go(driver, "#/topology")
        Select(driver.find_element(By.ID, "window")).select_by_value("10")
        apply("ratings-fault.yaml", RATINGS_FAULT)

        def red(d):
            e = edge(d, ENTRY, "default/ratings")
            return e is not None and e["data-health"] == "bad"
        wait.until(red)
        e = edge(driver, ENTRY, "default/ratings")
        stroke = e["stroke"]
        assert stroke == "rgb(229, 72, 77)", e
        assert driver.execute_script("return window.__noReload") == "still here", "the page reloaded"
        problems = driver.find_element(By.ID, "problems").text
        assert "ratings" in problems, problems
        log(f"ok: with the fault the edge entry -> ratings is red ({stroke}); "
            f"success {e['data-success']}")
        time.sleep(2.5)
        shot(driver, "topology-fault.png")
    finally:
        stop.set()
        t.join(timeout=15)

    # Live: a tap of reviews shows requests as they pass; replicas and store.
    go(driver, "#/live")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#live-service option[value="default/reviews"]'))
    Select(driver.find_element(By.ID, "live-service")).select_by_value("default/reviews")
    driver.find_element(By.ID, "live-tap-toggle").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#live-tap tbody tr")) >= 3)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#live-replicas tbody tr"))
    assert "answering" in driver.find_element(By.ID, "live-store").text
    log("ok: the tap streams reviews' requests; replicas and store shown")
    shot(driver, "live.png")
    driver.find_element(By.ID, "live-tap-toggle").click()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test prints this log
        import traceback
        traceback.print_exc()
        sys.exit(1)
