"""`swift app`'s flags on `swiftops app` (issue 18, item 9): --server_name/--server_port, --studio_title,
--lang zh|en (the page really in Chinese), --stream, --is_multimodal, and --share refused with the reason."""
from __future__ import annotations

import html
import re
import subprocess
import time

import httpx
import pytest

from tests.server_process import free_port
from swiftops.server.ui_text import HTML_ZH, SCRIPT_TEXT

# Words that stay as they are on a Chinese page (names, units, keys).
KEPT_WORDS = {"swiftops", "API", "OpenAI", "Top", "Enter", "Shift", "token", "MiB"}


def start_page(swiftops_process, *flags: str):
    argv, env = swiftops_process
    port = free_port("127.0.0.1")
    process = subprocess.Popen([*argv, "app", "--base_url", "http://127.0.0.1:9", "--server_name", "127.0.0.1",
                                "--server_port", str(port), *flags], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            return process, httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the page did not come up")


@pytest.fixture
def page(swiftops_process):
    processes = []

    def get(*flags: str) -> str:
        process, text = start_page(swiftops_process, *flags)
        processes.append(process)
        return text
    yield get
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def visible_words(page: str) -> set[str]:
    """Latin words a reader sees: text between tags, and placeholder/title/aria-label values."""
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", page, flags=re.S)
    texts = re.findall(r">([^<]+)<", body) + re.findall(r'(?:placeholder|title|aria-label)="([^"]*)"', body)
    return {w for t in texts for w in re.findall(r"[A-Za-z]{2,}", html.unescape(t))}


def test_every_translated_phrase_is_in_the_page():
    from pathlib import Path

    import swiftops.server.ui as ui

    page = (Path(ui.__file__).parent / "static" / "index.html").read_text(encoding="utf-8")
    assert [english for english in HTML_ZH if english not in page] == []
    assert set(SCRIPT_TEXT["zh"]) == set(SCRIPT_TEXT["en"])


def test_lang_zh_and_studio_title(page):
    chinese = page("--lang", "zh", "--studio_title", "我的 <模型>")
    assert '<html lang="zh-CN">' in chinese and "<title>我的 &lt;模型&gt;</title>" in chinese
    assert '<div class="brand">我的 &lt;模型&gt;</div>' in chinese
    for phrase in ("清空对话", "与你的模型对话", "发送", "系统提示词"):
        assert phrase in chinese
    assert visible_words(chinese) <= KEPT_WORDS, visible_words(chinese) - KEPT_WORDS
    assert "&#34;you&#34;: &#34;你&#34;" in chinese.replace("&quot;", "&#34;")  # app.js's own strings
    english = page("--lang", "en")
    assert '<html lang="en">' in english and "Clear conversation" in english and "<title>swiftops chat</title>" in english
    assert {"Clear", "conversation", "Send"} <= visible_words(english)


def test_bad_lang_and_share_are_one_line_refusals(run_swiftops):
    done = run_swiftops("app", "--model", "m", "--lang", "fr")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--lang" in done.stderr
    done = run_swiftops("app", "--model", "m", "--share", "true")
    assert done.returncode == 2 and "--share is not supported" in done.stderr and "tunnel or ingress" in done.stderr
