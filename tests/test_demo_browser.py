"""The demo in a real browser: the app on a free port of 127.0.0.1, driven by Playwright with a real Chromium
(npm @sparticuz/chromium, installed by `make node-deps` from package.json). Tiny models built in the test keep it
under a minute; the slow test takes the README's screenshots from the embedded 135m model."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tiny_smol import BASE_135M, ROOT, build_tiny_smol

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REQUIRED = os.environ.get("FTC_REQUIRE_BROWSER") == "1"  # make test sets it: a missing browser is then a failure
pytestmark = pytest.mark.skipif(not (BASE_135M / "config.json").is_file(), reason="needs models/base/135m (make setup)")


def _missing(why: str):
    if REQUIRED:
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of the Chromium that npm @sparticuz/chromium unpacks (once, under .cache/chromium)."""
    try:
        import playwright  # noqa: F401  (installed?)
    except ImportError:
        _missing("playwright is not installed (requirements.txt; make setup)")
    if not (ROOT / "node_modules" / "@sparticuz" / "chromium").is_dir():
        _missing("npm @sparticuz/chromium is not installed; run make node-deps")
    tmp = ROOT / ".cache" / "chromium"
    tmp.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["node", "-e", "import('@sparticuz/chromium').then(async m => "
                        "console.log(await m.default.executablePath()))"],
                       cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=120)
    path = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    if not path or not Path(path).is_file():
        pytest.fail(f"could not unpack Chromium: {r.stderr[-500:]}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(sources: dict, **overrides):
    from ftcompare import config
    from ftcompare.demo.app import build_app, launch
    from ftcompare.demo.models import ModelPool

    cfg = config.load_file("demo", config.DemoConfig)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    demo = build_app(ModelPool(sources, cfg.max_loaded_models), cfg)
    port = _free_port()
    launch(demo, "127.0.0.1", port)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    demo, url = serve({"base": build_tiny_smol(d / "base", seed=0, init_range=0.2), "full": build_tiny_smol(d / "full", seed=1, init_range=0.2)})
    yield url
    demo.close()


def _wait_status(page, elem: str, pattern: str, timeout_ms: int = 60_000) -> str:
    """Wait until the status box #elem matches the regex `pattern`; fail with what it says otherwise."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"() => {{ const e = document.querySelector('#{elem}'); "
                               f"return e && /{pattern}/.test(e.innerText); }}", timeout=timeout_ms)
    except PlaywrightTimeout:
        pytest.fail(f"#{elem} never matched /{pattern}/; it says: {page.locator(f'#{elem}').inner_text()!r}")
    return page.locator(f"#{elem}").inner_text()


def test_three_tabs_and_bad_input_in_a_real_browser(chromium, tiny_app):
    from playwright.sync_api import expect, sync_playwright

    t0 = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        outside = []  # the page must need nothing from the internet (fonts, scripts, analytics)
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((tiny_app, "data:", "blob:"))
                else None)
        page.goto(tiny_app)

        # Chat: one turn fills both panes (base and the variant), streamed, then says done.
        page.locator("#chat-input textarea").fill("Hello, who are you?")
        page.locator("#chat-send").click()
        assert "done: base vs full" in _wait_status(page, "chat-status", "done|⚠")
        for pane in ("#chat-base", "#chat-variant-pane"):
            expect(page.locator(f"{pane} [data-testid='user']")).to_contain_text("Hello, who are you?")
            assert page.locator(f"{pane} [data-testid='bot']").inner_text().strip(), pane
        # a message longer than the context: a message in the page, no new turn
        page.locator("#chat-input textarea").fill("word " * 1200)
        page.locator("#chat-send").click()
        _wait_status(page, "chat-status", "more than the 1024-token context", 15_000)
        assert page.locator("#chat-base [data-testid='bot']").count() == 1

        # Email proofreader: both scores before and after, the rewrite, and the diff.
        page.get_by_role("tab", name="Email proofreader").click()
        page.locator("#email-run").click()
        assert "done: rewritten by full" in _wait_status(page, "email-status", "done|⚠")
        for side in ("#scores-before", "#scores-after"):
            text = page.locator(side).inner_text()
            assert "Sentiment" in text and "Politeness" in text, text
            assert page.locator(f"{side} .ftc-sentiment").inner_text().strip()
            assert page.locator(f"{side} .ftc-politeness").inner_text().strip().isdigit()
        assert "direct imperative" in page.locator("#scores-before").inner_text()  # "send me the report ..."
        assert page.locator("#email-rewrite textarea").input_value().strip()
        expect(page.locator("#email-diff .ftc-diff")).to_be_visible()
        # bad input: empty, then 20,000 characters
        page.locator("#email-input textarea").fill("")
        page.locator("#email-run").click()
        _wait_status(page, "email-status", "the email is empty; paste an email", 15_000)
        page.locator("#email-input textarea").fill("x" * 20_000)
        page.locator("#email-run").click()
        _wait_status(page, "email-status", "20,000 characters, more than the limit of 8,000", 15_000)

        # Inspect: coloured per-token loss for both models and the attention heatmap.
        page.get_by_role("tab", name="Inspect").click()
        page.locator("#inspect-run").click()
        assert "done:" in _wait_status(page, "inspect-status", "done|⚠")
        expect(page.locator("#inspect-heatmap img")).to_be_visible()
        assert page.locator("#inspect-loss span[title]").count() > 0
        # a prompt longer than the context
        page.locator("#inspect-prompt textarea, #inspect-prompt input").first.fill("word " * 1200)
        page.locator("#inspect-run").click()
        _wait_status(page, "inspect-status", "more than the 1024-token context of 'base'", 15_000)
        assert not page.locator("text=Traceback").count()
        browser.close()
    assert not outside, outside
    assert time.perf_counter() - t0 < 60


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FTC_SCREENSHOT_DIR"), reason="make screenshots runs it (needs the default "
                    "experiment's trained variants; the tiny-model test above is the one make test runs)")
def test_screenshots_from_the_embedded_model(chromium):
    """The README's screenshots: the embedded 135m base and the default experiment's variants (when trained).
    Written to $FTC_SCREENSHOT_DIR (make screenshots: docs/screenshots)."""
    from playwright.sync_api import expect, sync_playwright

    from ftcompare.demo.models import served_models

    out = Path(os.environ["FTC_SCREENSHOT_DIR"])
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    sources = served_models("default", "135m")
    assert len(sources) > 1, "no trained variant of the default experiment: run make all first"
    demo, url = serve(sources)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#chat-temperature input[type=number]").fill("0")
            page.locator("#chat-temperature input[type=number]").press("Enter")
            page.locator("#chat-max-new input[type=number]").fill("48")
            page.locator("#chat-max-new input[type=number]").press("Enter")
            page.locator("#chat-input textarea").fill("What is the capital of France?")
            page.locator("#chat-send").click()
            _wait_status(page, "chat-status", "done|⚠", 300_000)
            assert "done" in page.locator("#chat-status").inner_text()
            page.screenshot(path=str(out / "chat.png"), full_page=True)

            page.get_by_role("tab", name="Email proofreader").click()
            page.locator("#email-run").click()
            _wait_status(page, "email-status", "done|⚠", 300_000)
            expect(page.locator("#scores-before .ftc-politeness")).to_be_visible()
            page.screenshot(path=str(out / "email.png"), full_page=True)

            page.get_by_role("tab", name="Inspect").click()
            page.locator("#inspect-run").click()
            assert "done" in _wait_status(page, "inspect-status", "done|⚠", 300_000)
            expect(page.locator("#inspect-heatmap img")).to_be_visible()
            page.screenshot(path=str(out / "inspect.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    for name in ("chat", "email", "inspect"):
        assert (out / f"{name}.png").stat().st_size > 10_000
