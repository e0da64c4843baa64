"""docs/report.png: report.html of the `make run` job in headless Chromium, one task opened.

    .venv/bin/arcfast ttft --out /tmp/make-run       # what `make run` runs
    .venv/bin/python docs/screenshot.py /tmp/make-run [TASK_ID]
"""
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

run = Path(sys.argv[1])
task = sys.argv[2] if len(sys.argv) > 2 else None
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
    page.goto((run / "report.html").resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']")
    rows = page.locator("#task-table tr.task")
    ids = rows.locator("td.id").all_inner_texts()
    rows.nth(ids.index(task) if task in ids else 0).click()
    page.screenshot(path=str(Path(__file__).parent / "report.png"), full_page=True)
    browser.close()
