# mypy: disallow-untyped-calls=False
# selenium leaves some of WebDriver's methods unannotated.
"""Headless Chromium (Debian's `chromium` and `chromium-driver`) for the tests that look at pages:
the compliance report and the provider's web inbox. No network: background fetches, updates and
extensions are off. axe-core (vendored in tests/e2e/axe) checks a page's accessibility."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

AXE = Path(__file__).with_name("axe") / "axe.min.js"
#: axe-core's impact levels that fail a test.
BLOCKING_IMPACTS = ("serious", "critical")


def headless_chromium(
    folder: Path,
    *,
    logging: bool = False,
    accept_insecure_certs: bool = False,
    window: tuple[int, int] = (1100, 900),
) -> webdriver.Chrome:
    """A new headless Chromium with a profile of its own under `folder`.

    `logging`: keep the console and the network log (`get_log("browser"|"performance")`).
    `accept_insecure_certs`: trust a server certificate from a test CA.
    """
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={folder / f'chromium-{uuid.uuid4().hex}'}",
    ):
        options.add_argument(flag)
    if logging:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    if accept_insecure_certs:
        options.accept_insecure_certs = True
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def axe_violations(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page now open (WCAG 2.x A and AA)."""
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    result: dict[str, Any] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
        ".then(r => done({violations: r.violations.map(v => ({id: v.id, impact: v.impact,"
        " help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))}))"
        ".catch(e => done({error: String(e)}));"
    )
    assert "error" not in result, result
    return [v for v in result["violations"] if v["impact"] in BLOCKING_IMPACTS]
