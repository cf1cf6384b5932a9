# mypy: disallow-untyped-calls=False
# selenium leaves some of WebDriver's methods unannotated.
"""The provider's web inbox in a real browser (issue 13), fed by the real bridge over HTTPS.

One run per module: `referral-bridge provider inbox --users ...` as a subprocess on loopback (its
own test CA), accounts made with `referral-bridge provider users add`, the real worker on
RabbitMQ delivering Lancashire's referrals to it by HTTPS, and one headless Chromium. A case
worker signs in, sees the referral, opens it and records "contacted"; the bridge's ledger then
holds the outcome, consumed from RabbitMQ. axe-core checks every page. A withdrawal from the
bridge deletes the other victim's details while the browser watches. With RB_SCREENSHOTS=DIR
the pages are also saved (small PNGs) for docs/provider-guide.md: `RB_SCREENSHOTS=docs/images`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By

from referral_bridge.core import ids
from referral_bridge.ledger.schema import referral_outcomes
from tests.e2e.browser import axe_violations, headless_chromium
from tests.e2e.helpers import (
    BRIDGE_KID,
    LANCASHIRE,
    BridgeEnv,
    cli_command,
    consent_event,
    crime_event,
    key_path,
    new_ref,
    provider_kid,
    worker_environment,
)
from tests.e2e.test_closing_the_loop import ledger_rows
from tests.e2e.test_inbox_cli import free_port, inbox_command, listening
from tests.e2e.test_report import MARKERS, marked
from tests.integration.test_delivery_helpers import make_pki
from tests.waiting import wait_until

# One group, so `make test` runs the module in one process, in order, with one bridge and browser.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("intake_browser")]

PASSWORD = "a long test passphrase"
WORKER, ADMIN = "casey", "alex"


@dataclass
class World:
    env: BridgeEnv
    base: str
    driver: Chrome
    inbox_log: Path
    worked: str  # the referral the case worker opens and marks contacted
    withdrawn: str  # the one the force withdraws
    withdrawn_case: tuple[str, str]
    shots: Path


def add_user(users: Path, name: str, *options: str) -> None:
    done = subprocess.run(
        [
            *cli_command(),
            "provider",
            "users",
            "add",
            name,
            "--users",
            str(users),
            "--password-stdin",
            *options,
        ],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        env=worker_environment(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str) -> Iterator[World]:
    root = tmp_path_factory.mktemp("intake-browser")
    env = BridgeEnv.create(root / "bridge", rabbitmq_url=rabbitmq_url, scheduler_interval=0.5)
    pki = make_pki(root / "pki")
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    # Lancashire's referrals go by HTTPS to the inbox under test; the rest stay on AMQP.
    https = (
        'delivery = "https"\n'
        f'url = "{base}/referrals"\n'
        f'ca_bundle = "{pki.ca_cert}"\n'
        "connect_timeout_seconds = 2.0\n"
        "read_timeout_seconds = 5.0\n"
    )
    lancashire_keys = f'public_keys = "keys/{provider_kid(LANCASHIRE)}.public.jwk"\n'
    config = env.config.read_text(encoding="utf-8")
    assert lancashire_keys in config
    env.config.write_text(config.replace(lancashire_keys, lancashire_keys + https), "utf-8")

    users = root / "users.json"
    add_user(users, WORKER, "--team", "general")
    add_user(users, ADMIN, "--role", "admin")
    inbox_log = root / "inbox.log"
    with inbox_log.open("wb") as log:
        inbox = subprocess.Popen(
            [
                *inbox_command(
                    pki,
                    (
                        key_path(env.keys, provider_kid(LANCASHIRE), "private"),
                        key_path(env.keys, BRIDGE_KID, "public"),
                    ),
                    port,
                    root / "inbox" / "inbox.sqlite3",
                    log_json=True,
                ),
                "--users",
                str(users),
                "--broker-url",
                rabbitmq_url,
                "--outcomes-exchange",
                env.topology.outcomes_exchange,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_environment(),
        )
    driver = None
    try:
        assert wait_until(lambda: listening(port), timeout=30), inbox_log.read_text()
        env.start_worker()
        worked_case, withdrawn_case = (new_ref("WEB"), new_ref("P")), (new_ref("WEB"), new_ref("P"))
        env.publish(
            *(
                marked(crime_event(crime_ref=case, victim_id=victim))
                for case, victim in (worked_case, withdrawn_case)
            )
        )
        env.wait_settled(2, timeout=90)
        driver = headless_chromium(root, accept_insecure_certs=True)
        yield World(
            env=env,
            base=base,
            driver=driver,
            inbox_log=inbox_log,
            worked=ids.referral_id(LANCASHIRE, *worked_case),
            withdrawn=ids.referral_id(LANCASHIRE, *withdrawn_case),
            withdrawn_case=withdrawn_case,
            shots=root / "shots",
        )
    finally:
        if driver is not None:
            driver.quit()
        inbox.terminate()
        inbox.wait(timeout=30)
        env.close()


def shoot(world: World, name: str) -> None:
    """A screenshot of the page; also a small copy in $RB_SCREENSHOTS for the provider guide."""
    world.shots.mkdir(exist_ok=True)
    path = world.shots / f"{name}.png"
    driver = world.driver
    # The whole page, not only what fits the window: the window is made as tall as the page.
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    chrome = int(driver.execute_script("return window.outerHeight - window.innerHeight"))
    content = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(content + chrome, 300), 2400))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)
    assert path.stat().st_size > 1000
    target = os.environ.get("RB_SCREENSHOTS")
    if target:
        from PIL import Image

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=48)
            small.save(Path(target) / f"inbox-{name}.png", optimize=True)


def accessible(world: World) -> None:
    violations = axe_violations(world.driver)
    assert violations == [], (world.driver.current_url, violations)


def sign_in(world: World, username: str) -> None:
    driver = world.driver
    driver.delete_all_cookies()
    driver.get(f"{world.base}/inbox")
    assert "/inbox/sign-in" in driver.current_url
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    assert wait_until(lambda: driver.current_url.rstrip("/").endswith("/inbox"), timeout=20), (
        driver.current_url,
        text(world),
    )


def no_personal_data_in_the_inbox_log(world: World, *events: str) -> None:
    """The inbox subprocess's log so far has the `events` and none of the marker values."""
    log = world.inbox_log.read_text(encoding="utf-8", errors="replace")
    for event in events:
        assert event in log
    for name, value in MARKERS.items():
        assert value not in log, name
    assert PASSWORD not in log


def text(world: World) -> str:
    return str(world.driver.find_element(By.TAG_NAME, "body").text)


def test_a_case_worker_signs_in_opens_the_referral_and_records_contacted(world: World) -> None:
    driver = world.driver
    driver.delete_all_cookies()
    driver.get(f"{world.base}/inbox")
    assert "Sign in" in driver.title
    accessible(world)
    driver.find_element(By.ID, "username").send_keys(WORKER)
    shoot(world, "sign-in")
    sign_in(world, WORKER)

    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-referral="{world.worked}"]')
    assert "general" in row.text
    assert "new" in row.text
    assert re.search(r"due in \d", row.text)
    accessible(world)
    shoot(world, "intake-list")

    row.find_element(By.PARTIAL_LINK_TEXT, "Open").click()
    assert wait_until(lambda: world.worked in driver.current_url, timeout=20)
    page = text(world)
    assert f"{MARKERS['given']} {MARKERS['family']}" in page
    assert MARKERS["notes"] in page
    # Laid out for a case worker: who and how to contact safely come first.
    assert page.index("How to contact them safely") < page.index("Needs")
    assert page.index("Needs") < page.index("Officer in charge")
    accessible(world)
    shoot(world, "referral")

    driver.find_element(By.CSS_SELECTOR, "label[for=outcome-contacted]").click()
    driver.find_element(By.XPATH, "//button[contains(., 'Record and send')]").click()

    def sent() -> bool:
        driver.refresh()
        return "contacted: sent to the force" in text(world)

    assert wait_until(sent, timeout=60, interval=0.5), text(world)
    accessible(world)
    shoot(world, "outcome-sent")

    # The bridge consumed it from RabbitMQ and recorded it in its ledger.
    def recorded() -> list[str]:
        rows = ledger_rows(world.env, referral_outcomes)
        return [str(r.outcome) for r in rows if r.referral_id == world.worked]

    assert wait_until(lambda: bool(recorded()), timeout=60)
    assert recorded() == ["contacted"]
    no_personal_data_in_the_inbox_log(
        world, "intake.signed_in", "intake.referral_opened", "intake.outcome_sent"
    )


def test_a_withdrawal_deletes_the_details_while_the_worker_watches(world: World) -> None:
    driver = world.driver
    sign_in(world, WORKER)
    driver.get(f"{world.base}/inbox/referrals/{world.withdrawn}")
    assert MARKERS["phone"] in text(world)
    processed = world.env.processed_count()
    case_ref, victim_id = world.withdrawn_case
    world.env.publish(consent_event(case_ref=case_ref, victim_id=victim_id, referral="withdrawn"))
    world.env.wait_settled(processed + 1, timeout=90)

    driver.get(f"{world.base}/inbox")
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-referral="{world.withdrawn}"]')
    assert "withdrawn" in row.text
    listed = driver.page_source
    driver.get(f"{world.base}/inbox/referrals/{world.withdrawn}")
    page = driver.page_source
    assert "Referral withdrawn" in page
    for name, value in MARKERS.items():
        assert value not in page, name
        assert value not in listed, name
    accessible(world)
    shoot(world, "withdrawn")
    no_personal_data_in_the_inbox_log(world, "inbox.answered")


def test_the_administrator_sees_who_opened_what_on_a_small_screen(world: World) -> None:
    driver = world.driver
    sign_in(world, WORKER)
    driver.get(f"{world.base}/inbox/referrals/{world.worked}")
    sign_in(world, ADMIN)
    driver.get(f"{world.base}/inbox/views")
    rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert any(WORKER in r and world.worked in r for r in rows), rows
    accessible(world)
    shoot(world, "views")
    driver.set_window_size(400, 800)
    try:
        for path in ("/inbox", f"/inbox/referrals/{world.worked}"):
            driver.get(world.base + path)
            # Nothing wider than the screen but the table, which scrolls in its own region.
            assert driver.execute_script("return document.body.scrollWidth <= window.innerWidth"), (
                path
            )
            accessible(world)
    finally:
        driver.set_window_size(1100, 900)
    driver.find_element(By.XPATH, "//button[contains(., 'Sign out')]").click()
    assert wait_until(lambda: "/inbox/sign-in" in driver.current_url, timeout=20)
    driver.get(f"{world.base}/inbox")
    assert "/inbox/sign-in" in driver.current_url
