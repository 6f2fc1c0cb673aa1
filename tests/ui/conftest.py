"""A real `swiftops app --model` server (tiny model, two LoRA adapters, an API key) and headless Chromium.

Chromium is Debian's (`apt-get install chromium`; `make test` installs it: scripts/ensure-chromium.sh): Playwright's own browser download is
blocked here, so Playwright drives /usr/bin/chromium through `executable_path`.
"""
from __future__ import annotations

import shutil

import httpx
import pytest

from tests.server_process import ServerProcess

API_KEY = "sk-ui-3f9c1e"
SERVED_NAME = "tiny-chat"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]



@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def ui_server(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    """`swiftops app --model ...`: the OpenAI server with the chat page at /."""
    root = tmp_path_factory.mktemp("ui-loras")
    adapters = [f"{name}={make_lora_adapter(tiny_model_dir, root / name, seed)}"
                for seed, name in enumerate(["sql", "poem"], start=1)]
    process = ServerProcess(["--model", str(tiny_model_dir), "--served_model_name", SERVED_NAME, "--api_key", API_KEY,
                             "--adapters", *adapters])
    process.args[process.args.index("deploy")] = "app"  # ServerProcess runs `deploy`; this is the `app` command
    with process:
        yield process


@pytest.fixture(scope="session")
def api(ui_server):
    with httpx.Client(base_url=ui_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


# Module scope: Playwright's sync API runs an event loop in this thread while it lives; ending it with each
# UI module keeps asyncio.run usable in the tests collected after them.
@pytest.fixture(scope="module")
def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture()
def context(browser):
    """A fresh browser context per test: its own session storage, so API keys don't leak between tests."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    yield context
    context.close()
