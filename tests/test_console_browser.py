"""The operator console in a real browser: Debian's chromium driven by Playwright, against a
real broker over TLS with records flowing. Every panel renders, numbers move, warnings show in
their style, an approval from the page lets the subscriber's records flow, the session's secret
leaves the address bar for sessionStorage, a split view of the log shows in red, and requests
without the session (or with the cookie alone) are refused. Screenshots of each panel at
1280×800 and 390×844 are kept in ``tests/artifacts/console/`` (README: "Operator console").

Nothing is downloaded: Playwright's wheel carries its driver, and the browser is the system's
``chromium`` (``executable_path``). ``make test`` installs both; without them these tests fail
and say so, they do not skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from exchange import pki
from exchange.clock import FakeClock
from exchange.console import Console, serve
from exchange.console.model import CheckpointSeen
from exchange.node import Delivery, Node
from tests.conftest import OWNERS, Env, broker_config, make_pki, people, start_broker, until

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

POPULATION = OWNERS["population"]
EXPIRING = "vn.gov.test.expiring"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "console"
PANELS = ("overview", "nodes", "datasets", "agreements", "subscriptions", "log")
#: the warning style (console.css: --warn-bg, --warn)
AMBER_BG = "rgb(255, 244, 214)"
AMBER_INK = "rgb(138, 90, 0)"
#: the failure style (console.css: --bad)
RED_INK = "rgb(180, 35, 24)"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
INSTALL_HINT = ("`make test` installs them: the Debian package `chromium` (apt-get install -y "
                "--no-install-recommends chromium) and Playwright from PyPI (the dev extra)")


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.path.exists("/usr/bin/chromium"):
        path = "/usr/bin/chromium"
    if path is None:
        pytest.fail(f"the console's browser tests need chromium, which is not installed; "
                    f"{INSTALL_HINT}", pytrace=False)
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        pytest.fail(f"the console's browser tests need playwright, which is not installed; "
                    f"{INSTALL_HINT}", pytrace=False)
    executable = chromium_path()
    expect.set_options(timeout=20_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@contextlib.asynccontextmanager
async def console_on(config: Any) -> AsyncIterator[tuple[Console, str, web.AppRunner]]:
    console = Console(config, interval_s=0.1, step_s=0.0)
    runner, url = await serve(console)
    try:
        yield console, url, runner
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def records_flowing(env: Env, console: Console) -> AsyncIterator[None]:
    """The population registry publishes a few records at each console poll (paced by the
    console's own updates, not by sleeping) until the block ends."""
    stop = asyncio.Event()

    async def publish() -> None:
        async with Node(env.node_config(POPULATION)) as node:
            batch = 0
            while not stop.is_set():
                batch += 1
                await node.publish("population", people(3, seed=1000 + batch))
                updated = console.next_update()
                await asyncio.wait({asyncio.ensure_future(updated.wait()),
                                    asyncio.ensure_future(stop.wait())},
                                   return_when=asyncio.FIRST_COMPLETED)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        stop.set()
        await task


async def shoot_panels(page: Page, label: str) -> None:
    for panel in PANELS:
        section = page.locator(f"#{panel}")
        await section.scroll_into_view_if_needed()
        await section.screenshot(path=str(ARTIFACTS / f"{panel}-{label}.png"))
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / f"console-{label}.png"))


async def no_sideways_scroll(page: Page) -> None:
    width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"


async def test_console_in_a_browser(env: Env, browser: Browser) -> None:
    from playwright.async_api import expect

    # a node whose certificate expires in 10 days asks for population; the owner approves,
    # so the request waits for the operator's countersignature
    pki.enroll(env.pki_dir, EXPIRING, validity_days=10)
    received: list[Delivery] = []
    got = asyncio.Event()

    async def handler(d: Delivery) -> None:
        received.append(d)
        got.set()

    async with Node(env.node_config(EXPIRING)) as subscriber, \
            Node(env.node_config(POPULATION)) as owner, \
            console_on(env.operator_config()) as (console, url, _runner), \
            records_flowing(env, console):
        asked = await subscriber.request_agreement(
            "population", purpose="check the console's approval", groups=["residence"],
            legal_basis="Law 91/2025/QH15 Art. 1", days=60)
        await owner.decide(asked["id"], "approve")

        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        response = await page.goto(url)
        assert response is not None and response.status == 200
        assert page.url.endswith("/")  # the token and the session secret left the address bar
        assert "#" not in page.url and "token" not in page.url
        secret = await page.evaluate("sessionStorage.getItem('exchange-console-session')")
        assert isinstance(secret, str) and len(secret) >= 32
        assert secret not in await page.content()
        for panel in PANELS:
            await expect(page.locator(f"#{panel}")).to_be_visible()
            await expect(page.locator(f"#{panel} h2")).not_to_be_empty()

        # overview numbers come in, then move as records flow
        accepted = page.locator('#overview [data-k="accepted"]')
        await expect(accepted).not_to_have_text("—")
        await expect(page.locator('#overview [data-k="store"]')).to_have_text("sqlite")
        before = await accepted.inner_text()
        await expect(accepted).not_to_have_text(before)
        log_size = page.locator("#log-size")
        before = await log_size.inner_text()
        await expect(log_size).not_to_have_text(before)
        await expect(page.locator("#rate-chart svg polyline").first).to_be_attached()

        # nodes: the publisher's count moves; the expiring certificate in the warning style
        published = page.locator(f'tr[data-node="{POPULATION}"] td.num')
        await expect(published).not_to_have_text("0")
        before = await published.inner_text()
        await expect(published).not_to_have_text(before)
        warn = page.locator(f'tr[data-node="{EXPIRING}"] .cert .badge.warn')
        await expect(warn).to_be_visible()
        await expect(warn).to_have_css("background-color", AMBER_BG)
        await expect(page.locator(f'tr[data-node="{POPULATION}"] .cert .badge.ok')
                     ).to_be_visible()

        # datasets: titles from the catalogue, scores, a chart; never-updated ones are stale
        population = page.locator('[data-dataset="population"]')
        await expect(population).not_to_have_class("dataset stale")
        await expect(population.locator(".score.correct .v")).to_have_text("1.000")
        await expect(population.locator("svg polyline").first).to_be_attached()
        tax = page.locator('[data-dataset="tax"]')
        await expect(tax).to_have_class("dataset stale")
        await expect(tax.locator(".stale-badge")).to_have_css("color", AMBER_INK)
        await expect(tax.locator(".stale-badge")).to_have_css("background-color", AMBER_BG)

        # subscriptions: the reference agreements' subscribers have none yet; the log grows
        await expect(page.locator("#checkpoints-body tr").first).not_to_have_class("empty")
        await shoot_panels(page, "1280")

        # approving the pending agreement from the page makes the subscriber's records flow
        row = page.locator(f'#pending-body tr[data-agreement="{asked["id"]}"]')
        await expect(row).to_contain_text("awaiting operator")
        await row.locator('button[data-action="countersign"]').click()
        await expect(page.locator("#action-status")).to_contain_text("is now active")
        active = page.locator(f'#active-body tr[data-agreement="{asked["id"]}"]')
        await expect(active).to_be_visible()
        await expect(active.locator('button[data-action="revoke"]')).to_be_visible()
        sub = subscriber.subscribe("population", "console-approved", handler)
        await asyncio.wait_for(got.wait(), 20)
        first = len(received)
        await until(lambda: len(received) > first, console.next_update, within=20,
                    what="records still flowing to the subscriber")
        assert all(d.dataset == "population" for d in received)
        lag = page.locator(f'tr[data-subscription="{EXPIRING}/population/console-approved"]')
        await expect(lag).to_be_visible()
        await expect(lag.locator(".badge.ok")).to_have_text("connected")

        # the log: the first check records the baseline (it proves nothing yet); the next
        # asks the broker for a consistency proof and checks it itself
        await page.locator("#verify").click()
        result = page.locator("#verify-result")
        await expect(result).to_have_class("verify info")
        await expect(result).to_contain_text("baseline recorded")
        await expect(result).not_to_contain_text("verified:")
        await page.locator("#verify").click()
        await expect(result).to_have_class("verify ok")
        await expect(result).to_contain_text("verified")

        # the broker shows another root for a size the console saw: red on the Log panel
        seen = console.model.checkpoints[-1]
        console.model.see_checkpoint(CheckpointSeen(seen.seen_at, seen.size,
                                                    "b3RoZXIgaGlzdG9yeQ=="))
        warning = page.locator('#log-warnings .log-warning[data-code="split_view"]')
        await expect(warning).to_be_visible()
        await expect(warning).to_contain_text(f"two roots for size {seen.size}")
        await expect(warning).to_have_css("color", RED_INK)

        # the narrow screen: same page, no sideways scrolling, tables scroll in their panel
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(page.locator("#overview .card").first).to_be_visible()
        await no_sideways_scroll(page)
        await shoot_panels(page, "390")
        await no_sideways_scroll(page)
        await page.set_viewport_size({"width": 1280, "height": 800})
        await no_sideways_scroll(page)
        await sub.stop()

        # the cookie alone (another local service gets it: cookies ignore ports) opens the
        # page, which holds no secret and can do nothing
        thief = await browser.new_context(viewport={"width": 1280, "height": 800})
        base = url.split("/?")[0]
        await thief.add_cookies([{"name": c["name"], "value": c["value"], "url": base + "/"}
                                 for c in await context.cookies()])
        tab = await thief.new_page()
        refused = await tab.goto(base + "/api/snapshot")
        assert refused is not None and refused.status == 403
        await tab.goto(base + "/")
        await expect(tab.locator("#status-text")).to_contain_text("no session in this tab")
        await expect(tab.locator("#overview [data-k=accepted]")).to_have_text("—")
        await thief.close()

        # requests without the session cookie, or with a wrong or spent token, are refused
        stranger = await browser.new_context()
        other = await stranger.new_page()
        for attempt in (base + "/", url, base + "/?token=wrong", base + "/api/snapshot",
                        base + "/static/console.js"):
            refused = await other.goto(attempt)
            assert refused is not None and refused.status == 403, attempt
            assert "Transparency log" not in await other.content()
        await stranger.close()
        await context.close()


@pytest.fixture
async def fake_clock_env(tmp_path: Path) -> AsyncIterator[tuple[Env, FakeClock]]:
    """A broker whose clock the test moves: a dataset goes quiet without waiting an hour."""
    clock = FakeClock(start=time.time())
    pki_dir = make_pki(tmp_path)
    config = broker_config(pki_dir, tmp_path / "data")
    broker, runner, url = await start_broker(config, clock=clock)
    try:
        yield Env(tmp_path, pki_dir, tmp_path / "data", url, broker, runner), clock
    finally:
        await runner.cleanup()


async def test_a_dataset_that_goes_quiet_turns_stale(
        fake_clock_env: tuple[Env, FakeClock], browser: Browser) -> None:
    from playwright.async_api import expect

    env, clock = fake_clock_env
    async with Node(env.node_config(POPULATION)) as node:
        result = await node.publish("population", people(10, seed=5))
    assert result.accepted == 10
    async with console_on(env.operator_config()) as (_console, url, _runner):
        page = await (await browser.new_context(viewport={"width": 1280, "height": 800})
                      ).new_page()
        await page.goto(url)
        population = page.locator('[data-dataset="population"]')
        await expect(population).to_have_class("dataset")
        await expect(population.locator(".badge.ok")).to_have_text("live")
        await clock.advance(3_601)  # past population's update interval of an hour
        await expect(population).to_have_class("dataset stale")
        badge = population.locator(".stale-badge")
        await expect(badge).to_have_text("stale")
        await expect(badge).to_have_css("background-color", AMBER_BG)
        await expect(population).to_have_css("border-top-color", "rgb(240, 180, 41)")
        # the panel, not the card: each snapshot redraws the cards, and an element screenshot
        # of one can find it replaced mid-shot
        await page.locator("#datasets").screenshot(
            path=str(ARTIFACTS / "dataset-stale-1280.png"))
        await page.context.close()
