#!/usr/bin/env python3
"""How the dashboard behaves in a real browser on a big mesh: opens the topology of a running
control plane (e.g. `DASHBOARD_SCALE_HOLD=120 cargo run -p trellis-control --example
dashboard_scale -- 1000 5`, which prints the login link), waits for the graph, and reports how
long the first render and the redraws take in the page (measured in the page with
performance.now around the render), then saves a screenshot.

    python3 bench/dashboard_browser.py 'http://127.0.0.1:PORT/dashboard/?token=TOKEN' out.png
"""
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

link, out = sys.argv[1], sys.argv[2]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1500,1000"]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    t0 = time.monotonic()
    d.get(link)
    WebDriverWait(d, 120).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "g.node")) > 0)
    first = time.monotonic() - t0
    # Time one redraw of what is shown, in the page.
    ms = d.execute_script("""
        const t = performance.now(); renderTopology(); return performance.now() - t;""")
    nodes = len(d.find_elements(By.CSS_SELECTOR, "g.node"))
    edges = len(d.find_elements(By.CSS_SELECTOR, "g.edge"))
    print(f"first graph after {first:.1f} s (login, first event); {nodes} nodes, {edges} edges "
          f"drawn; one redraw {ms:.0f} ms")
    d.find_element(By.ID, "filter").send_keys("svc-42")
    ms = d.execute_script("const t = performance.now(); renderTopology(); return performance.now() - t;")
    nodes = len(d.find_elements(By.CSS_SELECTOR, "g.node"))
    print(f"filter 'svc-42': {nodes} nodes, redraw {ms:.0f} ms")
    d.save_screenshot(out)
    d.find_element(By.ID, "filter").clear()
finally:
    d.quit()
