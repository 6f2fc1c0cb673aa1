"""The chat page's words in English and Chinese (`swiftops app --lang en|zh`, as `swift app --lang`).

The page's HTML is English; `page_in` swaps each English phrase for its translation when the server renders it,
and hands the strings that app.js builds (roles, errors, statistics) to the script in a <meta> tag, so that every
translation lives here. A test checks that each English phrase still occurs in the page (a renamed button cannot
silently stay untranslated).
"""

from __future__ import annotations

import html
import json

DEFAULT_TITLE = "swiftops chat"

# English phrase in index.html -> Chinese (the phrase as it appears in the markup, attribute values included).
HTML_ZH: dict[str, str] = {
    '<html lang="en">': '<html lang="zh-CN">',
    'aria-label="Settings"': 'aria-label="设置"',
    '<span class="label">Model</span>': '<span class="label">模型</span>',
    'aria-label="Model"': 'aria-label="模型"',
    '<span class="label">System prompt</span>': '<span class="label">系统提示词</span>',
    'placeholder="You are a helpful assistant."': 'placeholder="你是一个乐于助人的助手。"',
    '<legend class="label">Generation</legend>': '<legend class="label">生成参数</legend>',
    "<span>Temperature</span>": "<span>温度</span>",
    "<span>Top p</span>": "<span>Top p</span>",
    "<span>Max tokens</span>": "<span>最大生成 token 数</span>",
    "<span>Seed</span>": "<span>随机种子</span>",
    'placeholder="random"': 'placeholder="随机"',
    '<span class="label">API key</span>': '<span class="label">API 密钥</span>',
    'placeholder="none"': 'placeholder="无"',
    "Kept in this tab's session storage only.": "仅保存在本标签页的会话存储中。",
    ">Clear conversation</button>": ">清空对话</button>",
    "<h1>Chat with your model</h1>": "<h1>与你的模型对话</h1>",
    "<p>Streamed from the OpenAI-compatible API. Drop images, videos or audio here to attach them.</p>": (
        "<p>由 OpenAI 兼容接口流式返回。将图片、视频或音频拖到这里即可添加附件。</p>"
    ),
    'title="Attach image, video or audio"': 'title="添加图片、视频或音频"',
    'aria-label="Attach image, video or audio"': 'aria-label="添加图片、视频或音频"',
    'placeholder="Send a message (Enter to send, Shift+Enter for a new line)"': (
        'placeholder="输入消息（Enter 发送，Shift+Enter 换行）"'
    ),
    'aria-label="Message"': 'aria-label="消息"',
    ">Send</button>": ">发送</button>",
    ">Stop</button>": ">停止</button>",
    ">Drop to attach</div>": ">松开以添加附件</div>",
}

# Strings app.js builds; {name} placeholders are filled in by the script.
SCRIPT_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "you": "You",
        "adapter": "{id} (adapter)",
        "error": "Error {status}",
        "unreachable": "Cannot reach the API at {root}: {reason}. Check that the server is running.",
        "not_media": "{name}: only images, videos and audio can be attached (this is {type}).",
        "too_big": "{name} is {size} MiB; attachments are limited to 20 MiB.",
        "prompt_tokens": "{n} prompt tokens",
        "completion_tokens": "{n} completion tokens",
        "tokens_per_second": "{n} tokens/s",
        "first_token": "first token {s} s",
        "seconds": "{s} s",
        "stopped": "stopped",
        "cut": "cut at max tokens",
    },
    "zh": {
        "you": "你",
        "adapter": "{id}（适配器）",
        "error": "错误 {status}",
        "unreachable": "无法连接 {root} 的 API：{reason}。请确认服务正在运行。",
        "not_media": "{name}：只能添加图片、视频和音频（该文件类型为 {type}）。",
        "too_big": "{name} 大小为 {size} MiB；附件不能超过 20 MiB。",
        "prompt_tokens": "输入 {n} token",
        "completion_tokens": "输出 {n} token",
        "tokens_per_second": "{n} token/秒",
        "first_token": "首 token {s} 秒",
        "seconds": "{s} 秒",
        "stopped": "已停止",
        "cut": "达到最大 token 数而截断",
    },
}


def page_in(page: str, lang: str = "en", title: str | None = None) -> str:
    """index.html in `lang`, with `title` (--studio_title) as the window title and the sidebar's name."""
    if lang not in SCRIPT_TEXT:
        raise ValueError(f"lang {lang!r}: use en or zh")
    if lang == "zh":
        for english, chinese in HTML_ZH.items():
            page = page.replace(english, chinese)
    if title:
        escaped = html.escape(title, quote=False)
        page = page.replace(f"<title>{DEFAULT_TITLE}</title>", f"<title>{escaped}</title>")
        page = page.replace('<div class="brand">swift<span>ops</span></div>', f'<div class="brand">{escaped}</div>')
    text = html.escape(json.dumps(SCRIPT_TEXT[lang], ensure_ascii=False), quote=True)
    return page.replace("{{PAGE_TEXT}}", text)
