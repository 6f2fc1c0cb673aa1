"""The chat page in headless Chromium against a real `swiftops app` server: streaming, stop, history,
adapters, attachments, errors. Replies are greedy (temperature 0), so each must equal the API's answer."""
from __future__ import annotations

import base64
import io
import json
import math
import struct
import time

import httpx
import pytest

CHAT = "/v1/chat/completions"

REPLY_DONE = "() => !window.swiftops.state.controller && window.swiftops.state.messages.length >= {n}"
TRANSCRIPT = "() => window.swiftops.state.messages.map(m => ({role: m.role, text: m.text}))"


def open_page(context, server, key: str, *, temperature: str = "0", max_tokens: str = "32"):
    page = context.new_page()
    page.console_errors = []  # script errors and content-security-policy violations
    page.on("console", lambda message: message.type == "error" and "status of 401" not in message.text
            and page.console_errors.append(message.text))
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    page.goto(server.url)
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")  # the page reloads /v1/models with the key
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    return page


def wait_for_models(page) -> list[str]:
    page.wait_for_function("() => document.querySelectorAll('#model option[value]:not([value=\"\"])').length > 0")
    return page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")


def send(page, text: str, n_messages: int) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(REPLY_DONE.format(n=n_messages), timeout=30_000)


def api_chat(api, messages: list, model: str = "tiny-chat", max_tokens: int = 32) -> httpx.Response:
    return api.post(CHAT, json={"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                                "top_p": 1})


def api_answer(api, messages: list, **kwargs) -> dict:
    response = api_chat(api, messages, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def read_metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not on /metrics")


def test_streamed_reply_grows_and_equals_the_api_answer(context, ui_server, api, api_key):
    page = open_page(context, ui_server, api_key, max_tokens="450")
    assert wait_for_models(page)[0] == "tiny-chat"
    # Record what the reply's bubble shows at every DOM change while it streams.
    page.evaluate("""() => {
        window.shown = [];
        new MutationObserver(() => {
            const content = document.querySelector('.msg.assistant:last-child .content');
            if (content) window.shown.push(content.textContent.length);
        }).observe(document.getElementById('transcript'), {childList: true, subtree: true, characterData: true});
    }""")
    send(page, "Tell me about rivers.", 2)

    expected = api_answer(api, [{"role": "user", "content": "Tell me about rivers."}], max_tokens=450)
    transcript = page.evaluate(TRANSCRIPT)
    assert transcript[1] == {"role": "assistant", "text": expected["choices"][0]["message"]["content"]}
    shown = [n for n in page.evaluate("() => window.shown") if n > 0]
    assert len(set(shown)) >= 3, f"the reply did not appear piece by piece: {shown}"
    assert shown[0] < max(shown)
    meta = page.inner_text(".msg.assistant .meta")
    usage = expected["usage"]
    assert f"{usage['prompt_tokens']} prompt tokens" in meta
    assert f"{usage['completion_tokens']} completion tokens" in meta
    assert "tokens/s" in meta
    assert page.console_errors == []


def test_conversation_with_system_prompt_keeps_history(context, ui_server, api, api_key, tmp_path):
    page = open_page(context, ui_server, api_key, max_tokens="24")
    wait_for_models(page)
    system = "You are a concise assistant."
    page.fill("#system-prompt", system)
    send(page, "What is the capital of France?", 2)
    with page.expect_request(lambda r: r.url.endswith(CHAT)) as second:
        send(page, "And of Italy? One word, please.", 4)

    sent = second.value.post_data_json
    first_reply = page.evaluate(TRANSCRIPT)[1]["text"]
    history = [{"role": "system", "content": system}, {"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": first_reply},
               {"role": "user", "content": "And of Italy? One word, please."}]
    assert sent["messages"] == history
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    expected = api_answer(api, history, max_tokens=24)["choices"][0]["message"]["content"]
    assert page.evaluate(TRANSCRIPT)[3]["text"] == expected

    page.screenshot(path=str(tmp_path / "conversation.png"))  # docs/ui-screenshot.png comes from test_vlm_page

    page.click("#clear")
    assert page.evaluate(TRANSCRIPT) == []
    assert page.locator(".msg").count() == 0


def test_stop_aborts_the_generation_on_the_server(context, ui_server, api_key):
    page = open_page(context, ui_server, api_key, max_tokens="450")  # the tiny model runs to the limit
    wait_for_models(page)
    page.fill("#input", "Tell me a long story.")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('.msg.assistant .content').textContent.length > 0")
    assert read_metric(ui_server, "swiftops_num_requests_running") == 1
    page.click("#stop")
    page.wait_for_function(REPLY_DONE.format(n=2))

    deadline = time.monotonic() + 10
    while read_metric(ui_server, "swiftops_num_requests_running") != 0:
        assert time.monotonic() < deadline, "the server kept generating after stop"
        time.sleep(0.05)
    # The engine's own count comes from the engine process, a step or two later (its main loop reports changes).
    while read_metric(ui_server, "swiftops_engine_sequences_running") != 0:
        assert time.monotonic() < deadline, "the engine kept generating after stop"
        time.sleep(0.05)
    assert page.inner_text(".msg.assistant .meta").startswith("stopped")
    stopped_text = page.evaluate(TRANSCRIPT)[1]["text"]
    assert stopped_text
    assert page.is_visible("#send") and not page.is_visible("#stop")
    assert page.console_errors == []  # an aborted fetch is not an error


def test_adapter_picked_in_the_list_answers(context, ui_server, api, api_key):
    page = open_page(context, ui_server, api_key)
    assert wait_for_models(page) == ["tiny-chat", "sql", "poem"]
    page.select_option("#model", "sql")
    with page.expect_request(lambda r: r.url.endswith(CHAT)) as request:
        send(page, "all users older than 30", 2)

    assert request.value.post_data_json["model"] == "sql"
    messages = [{"role": "user", "content": "all users older than 30"}]
    adapter_answer = api_answer(api, messages, model="sql")["choices"][0]["message"]["content"]
    assert page.evaluate(TRANSCRIPT)[1]["text"] == adapter_answer
    assert adapter_answer != api_answer(api, messages)["choices"][0]["message"]["content"]
    assert page.inner_text(".msg.assistant .role") == "sql"


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def _wav(seconds: float = 0.2, rate: int = 16000) -> bytes:
    samples = [int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))]
    data = struct.pack(f"<{len(samples)}h", *samples)
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2,
                         2, 16, b"data", len(data))
    return header + data


def test_attachments_are_sent_as_content_parts_and_the_servers_answer_is_shown(context, ui_server, api, api_key):
    png, wav = _png((220, 60, 40)), _wav()
    page = open_page(context, ui_server, api_key)
    wait_for_models(page)
    page.set_input_files("#file", files=[{"name": "red.png", "mimeType": "image/png", "buffer": png}])
    # Drag and drop: a real DataTransfer holding a File, dropped on the chat area.
    drop = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'tone.wav', {type: 'audio/wav'}));
        return transfer;
    }""", base64.b64encode(wav).decode())
    page.dispatch_event("#chat", "drop", {"dataTransfer": drop})
    page.wait_for_function("() => document.querySelectorAll('#pending .chip').length === 2")
    assert page.locator("#pending img").get_attribute("alt") == "red.png"

    with page.expect_request(lambda r: r.url.endswith(CHAT)) as request:
        send(page, "What is in these?", 2)

    content = request.value.post_data_json["messages"][-1]["content"]
    assert content == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}},
        {"type": "text", "text": "What is in these?"}]
    # Thumbnails in the transcript, none left in the composer.
    assert page.locator(".msg.user .media img").count() == 1 and page.locator(".msg.user .media audio").count() == 1
    assert page.locator("#pending .chip").count() == 0
    # The tiny model is text-only: the server refuses the media, and the page shows the server's own message.
    refused = api_chat(api, [{"role": "user", "content": content}])
    assert refused.status_code == 400
    error = page.inner_text(".msg.assistant .error")
    assert error.startswith("Error 400") and refused.json()["error"]["message"] in error


def test_wrong_api_key_shows_the_401_message_inline(context, ui_server):
    expected = httpx.get(ui_server.url + "/v1/models", headers={"Authorization": "Bearer sk-wrong"}).json()
    page = open_page(context, ui_server, "sk-wrong")
    page.wait_for_function("(m) => (document.querySelector('.notice.error') || {}).textContent?.includes(m)",
                           arg=expected["error"]["message"])
    assert page.inner_text(".notice.error").startswith("Error 401")
    send(page, "hello?", 2)
    error = page.inner_text(".msg.assistant .error")
    assert error.startswith("Error 401") and expected["error"]["message"] in error
    # The failed turn is not part of the conversation the model sees next time.
    assert page.evaluate("() => window.swiftops.state.messages.map(m => Boolean(m.excluded))") == [True, True]
    assert page.evaluate("() => sessionStorage.getItem('swiftops.apiKey')") == "sk-wrong"


@pytest.mark.parametrize("source, html", [
    ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
    ("**bold**, *it* and `x<y`", "<p><strong>bold</strong>, <em>it</em> and <code>x&lt;y</code></p>"),
    ("```python\nprint('<b>')\n```", '<pre><span class="lang">python</span><code class="language-python">'
                                     "print(&#39;&lt;b&gt;&#39;)</code></pre>"),
    ("- a\n- **b**\n\n3. c\n4. d",
     '<ul><li>a</li><li><strong>b</strong></li></ul><ol start="3"><li>c</li><li>d</li></ol>'),
    ("[docs](https://x.org/?a=1&b=\"2\") [bad](javascript:alert(1))",
     '<p><a href="https://x.org/?a=1&amp;b=&quot;2&quot;" target="_blank" rel="noopener noreferrer">docs</a> '
     "[bad](javascript:alert(1))</p>"),
    ("line one\nline two\n\n## Title", "<p>line one<br>line two</p><h4>Title</h4>"),
    ("2 * 3 * 4 and snake_case_name", "<p>2 * 3 * 4 and snake_case_name</p>"),
])
def test_markdown_renderer_escapes_html_first(context, ui_server, source, html):
    page = context.new_page()
    page.goto(ui_server.url)
    assert page.evaluate("(s) => window.swiftops.renderMarkdown(s)", source) == html


def test_page_from_app_base_url_talks_to_another_server(context, ui_server, api, api_key):
    import subprocess
    import sys

    from tests.server_process import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "swiftops.cli.main", "app", "--base_url", ui_server.url + "/v1/",
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    page_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(page_url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "swiftops app --base_url did not start"
            time.sleep(0.1)
        assert httpx.get(page_url + "/v1/models").status_code == 404  # the page server serves no API

        page = context.new_page()
        page.goto(page_url)
        assert page.get_attribute('meta[name="swiftops-api-base"]', "content") == ui_server.url
        page.fill("#api-key", api_key)
        page.dispatch_event("#api-key", "change")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "16")
        assert wait_for_models(page) == ["tiny-chat", "sql", "poem"]  # cross-origin, allowed by the server's CORS
        send(page, "Hi there", 2)
        expected = api_answer(api, [{"role": "user", "content": "Hi there"}], max_tokens=16)
        assert page.evaluate(TRANSCRIPT)[1]["text"] == expected["choices"][0]["message"]["content"]
        assert json.loads(httpx.get(page_url + "/ready").text) == {"status": "ok"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_page_in_chinese_from_app_lang_zh(context, ui_server, api, api_key):
    """`swiftops app --lang zh --studio_title T` (swift app's flags): the script's own words are Chinese too."""
    import subprocess
    import sys

    from tests.server_process import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "swiftops.cli.main", "app", "--base_url", ui_server.url,
                                "--server_name", "127.0.0.1", "--server_port", str(port), "--lang", "zh",
                                "--studio_title", "通义演示"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    page_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if httpx.get(page_url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "swiftops app --lang zh did not start"
            time.sleep(0.1)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_url)
        assert page.title() == "通义演示" and page.inner_text(".brand") == "通义演示"
        assert page.inner_text("#clear") == "清空对话" and page.inner_text("#send") == "发送"
        page.fill("#api-key", api_key)
        page.dispatch_event("#api-key", "change")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "8")
        assert wait_for_models(page) == ["tiny-chat", "sql", "poem"]
        assert page.eval_on_selector_all("#model option", "o => o.map(x => x.textContent)")[1] == "sql（适配器）"
        send(page, "你好", 2)
        assert page.inner_text(".msg.user .role") == "你"
        meta = page.inner_text(".msg.assistant .meta")
        assert "输入" in meta and "token" in meta and "秒" in meta
        assert errors == []
    finally:
        process.terminate()
        process.wait(timeout=10)
