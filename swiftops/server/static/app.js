// swiftops chat page: plain browser JavaScript, no framework and no build step.
// Talks to the OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (streamed SSE).
"use strict";

(() => {
  const API_BASE = (document.querySelector('meta[name="swiftops-api-base"]').content || "").replace(/\/+$/, "");
  // Relative to the page when the API is this server, so a path prefix (an ingress at /qwen/) still works.
  const API_ROOT = API_BASE ? `${API_BASE}/v1` : new URL("v1", window.location.href).href.replace(/\/+$/, "");
  const KEY_STORAGE = "swiftops.apiKey";
  // The server refuses bodies over 32 MiB; base64 makes a file 4/3 larger.
  const MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024;
  const $ = (id) => document.getElementById(id);
  // The page's words for what this script writes (English or Chinese: `swiftops app --lang`).
  const TEXT = JSON.parse(document.querySelector('meta[name="swiftops-text"]').content);
  const t = (key, values = {}) => TEXT[key].replace(/\{(\w+)\}/g, (_, name) => String(values[name]));

  // ---------------------------------------------------------------- markdown
  // A small renderer for what chat models write: paragraphs, fenced code, inline code, lists, headings,
  // quotes, bold / italic and http(s) links. Everything is escaped before any tag is added.

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  }

  function renderInline(text) {
    // Code spans and links are set aside first, so emphasis never reaches inside them.
    const stash = [];
    const keep = (html) => `\u0000${stash.push(html) - 1}\u0000`;
    let s = text.replace(/\u0000/g, "");
    s = s.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${escapeHtml(code)}</code>`));
    s = s.replace(/\[([^\]\n]+)\]\(((?:https?:\/\/|mailto:)[^\s)]+)\)/g, (_, label, url) =>
      keep(`<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(label)}</a>`));
    s = escapeHtml(s);
    s = s.replace(/\*\*(?=\S)([^*\n]*?\S)\*\*/g, "<strong>$1</strong>").replace(/__(?=\S)([^_\n]*?\S)__/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])?\*(?![*\w])/g, (m, pre, body) =>
      body === undefined ? m : `${pre}<em>${body}</em>`);
    s = s.replace(/(^|[^_\w])_(?=[^\s_])([^_\n]*?[^\s_])?_(?![_\w])/g, (m, pre, body) =>
      body === undefined ? m : `${pre}<em>${body}</em>`);
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => stash[Number(i)]);
  }

  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w.+#-]*)/;
  const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;

  function isBlockStart(line) {
    return FENCE.test(line) || LIST_ITEM.test(line) || HEADING.test(line) || QUOTE.test(line);
  }

  function renderList(lines, i, html) {
    const ordered = /\d/.test(lines[i].match(LIST_ITEM)[2]);
    const start = ordered ? parseInt(lines[i].match(LIST_ITEM)[2], 10) : 1;
    const items = [];
    while (i < lines.length) {
      const item = lines[i].match(LIST_ITEM);
      if (item && /\d/.test(item[2]) === ordered) {
        items.push([item[3]]);
      } else if (items.length && /^\s+\S/.test(lines[i]) && !FENCE.test(lines[i])) {
        items[items.length - 1].push(lines[i].trim());  // a wrapped line of the item above
      } else {
        break;
      }
      i++;
    }
    const tag = ordered ? "ol" : "ul";
    const startAttr = ordered && start !== 1 ? ` start="${start}"` : "";
    html.push(`<${tag}${startAttr}>${items.map((it) => `<li>${it.map(renderInline).join("<br>")}</li>`).join("")}</${tag}>`);
    return i;
  }

  function renderMarkdown(source) {
    const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    const html = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(FENCE);
      if (fence) {
        const code = [];
        i++;
        while (i < lines.length && !(lines[i].trim().startsWith(fence[1][0].repeat(fence[1].length)) &&
                                     /^\s*[`~]+\s*$/.test(lines[i]))) {
          code.push(lines[i]);
          i++;
        }
        i++;  // the closing fence (absent while a reply is still streaming)
        const lang = fence[2] ? ` class="language-${escapeHtml(fence[2])}"` : "";
        const label = fence[2] ? `<span class="lang">${escapeHtml(fence[2])}</span>` : "";
        html.push(`<pre>${label}<code${lang}>${escapeHtml(code.join("\n"))}</code></pre>`);
      } else if (!line.trim()) {
        i++;
      } else if (HEADING.test(line)) {
        const [, hashes, text] = line.match(HEADING);
        const level = Math.min(6, hashes.length + 2);  // h1 in a chat bubble is too loud
        html.push(`<h${level}>${renderInline(text)}</h${level}>`);
        i++;
      } else if (LIST_ITEM.test(line)) {
        i = renderList(lines, i, html);
      } else if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
        html.push(`<blockquote>${renderMarkdown(quoted.join("\n"))}</blockquote>`);
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i]))) para.push(lines[i++]);
        html.push(`<p>${para.map(renderInline).join("<br>")}</p>`);
      }
    }
    return html.join("");
  }

  // ---------------------------------------------------------------- state
  const state = {
    messages: [],      // {role, text, attachments, model, error, stopped, stats, excluded, el}
    pending: [],       // attachments waiting for the next message: {kind, mime, name, url}
    controller: null,  // AbortController of the request in flight
    models: [],
  };

  const els = {
    transcript: $("transcript"), empty: $("empty"), input: $("input"), send: $("send"), stop: $("stop"),
    model: $("model"), system: $("system-prompt"), temperature: $("temperature"), topP: $("top-p"),
    maxTokens: $("max-tokens"), seed: $("seed"), apiKey: $("api-key"), clear: $("clear"), file: $("file"),
    attach: $("attach"), pending: $("pending"), composer: $("composer"), chat: $("chat"),
    overlay: $("drop-overlay"), server: $("server"),
  };

  function apiHeaders() {
    const headers = {"Content-Type": "application/json"};
    const key = els.apiKey.value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }


  // The OpenAI error shape's message, else whatever the body says.
  async function errorMessage(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) return body.error.message;
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON */ }
    return text.trim() || response.statusText || "request failed";
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function describeFailure(err) {
    if (err instanceof ApiError) return {status: err.status, message: err.message};
    // fetch rejects with a TypeError when the server cannot be reached (or a CORS check fails).
    return {status: null, message: t("unreachable", {root: API_ROOT, reason: err.message || err})};
  }

  // ---------------------------------------------------------------- models
  let modelsRequest = 0;  // only the latest listing counts (the key may change while one is in flight)
  async function loadModels() {
    const request = ++modelsRequest;
    try {
      const response = await fetch(`${API_ROOT}/models`, {headers: apiHeaders()});
      if (!response.ok) throw new ApiError(await errorMessage(response), response.status);
      const models = (await response.json()).data || [];
      if (request !== modelsRequest) return;
      const previous = els.model.value;  // read now: the user may have picked one while this loaded
      state.models = models;
      els.model.replaceChildren(...state.models.map((card) => {
        const option = document.createElement("option");
        option.value = card.id;
        option.textContent = card.parent ? t("adapter", {id: card.id}) : card.id;
        return option;
      }));
      if (state.models.some((card) => card.id === previous)) els.model.value = previous;
      clearNotice();
    } catch (err) {
      if (request !== modelsRequest) return;
      const failure = describeFailure(err);
      els.model.replaceChildren(new Option("(models unavailable)", ""));
      showNotice(failure.status ? `Error ${failure.status}: ${failure.message}` : failure.message);
    }
  }

  let notice = null;
  function showNotice(text) {
    clearNotice();
    notice = document.createElement("div");
    notice.className = "notice error";
    notice.textContent = text;
    els.transcript.prepend(notice);
  }
  function clearNotice() {
    if (notice) notice.remove();
    notice = null;
  }

  // ---------------------------------------------------------------- attachments
  const KINDS = ["image", "video", "audio"];

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function addFiles(files) {
    for (const file of files) {
      const kind = (file.type || "").split("/")[0];
      if (!KINDS.includes(kind)) {
        showNotice(t("not_media", {name: file.name, type: file.type || "unknown"}));
        continue;
      }
      if (file.size > MAX_ATTACHMENT_BYTES) {
        showNotice(t("too_big", {name: file.name, size: (file.size / 1048576).toFixed(1)}));
        continue;
      }
      state.pending.push({kind, mime: file.type, name: file.name, url: await readAsDataUrl(file)});
    }
    renderPending();
  }

  function mediaElement(attachment) {
    let el;
    if (attachment.kind === "image") {
      el = document.createElement("img");
      el.alt = attachment.name;
    } else {
      el = document.createElement(attachment.kind);
      el.controls = true;
      el.preload = "metadata";
      if (attachment.kind === "video") el.muted = true;
    }
    el.src = attachment.url;
    el.title = attachment.name;
    el.className = `media-${attachment.kind}`;
    return el;
  }

  function renderPending() {
    els.pending.replaceChildren(...state.pending.map((attachment, index) => {
      const chip = document.createElement("div");
      chip.className = "chip";
      chip.append(mediaElement(attachment));
      const name = document.createElement("span");
      name.className = "chip-name";
      name.textContent = attachment.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chip-remove";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", `Remove ${attachment.name}`);
      remove.addEventListener("click", () => {
        state.pending.splice(index, 1);
        renderPending();
      });
      chip.append(name, remove);
      return chip;
    }));
  }

  function audioFormat(mime) {
    const subtype = (mime.split("/")[1] || "wav").replace(/^x-/, "");
    if (["wav", "wave", "vnd.wave"].includes(subtype)) return "wav";
    if (["mpeg", "mp3"].includes(subtype)) return "mp3";
    return subtype;
  }

  // OpenAI content parts: image_url, video_url (vLLM's extension) and input_audio (raw base64 + format).
  function contentPart(attachment) {
    if (attachment.kind === "image") return {type: "image_url", image_url: {url: attachment.url}};
    if (attachment.kind === "video") return {type: "video_url", video_url: {url: attachment.url}};
    return {type: "input_audio",
            input_audio: {data: attachment.url.slice(attachment.url.indexOf(",") + 1), format: audioFormat(attachment.mime)}};
  }

  // ---------------------------------------------------------------- transcript
  function messageContent(message) {
    if (!message.attachments || !message.attachments.length) return message.text;
    const parts = message.attachments.map(contentPart);
    if (message.text) parts.push({type: "text", text: message.text});
    return parts;
  }

  function requestMessages() {
    const messages = [];
    const system = els.system.value.trim();
    if (system) messages.push({role: "system", content: system});
    for (const message of state.messages) {
      if (message.excluded || message.streaming) continue;
      if (message.role === "assistant" && !message.text) continue;
      messages.push({role: message.role, content: messageContent(message)});
    }
    return messages;
  }

  function isPinnedToBottom() {
    const t = els.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }

  function addMessage(message) {
    els.empty.hidden = true;
    const el = document.createElement("div");
    el.className = `msg ${message.role}`;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = message.role === "user" ? t("you") : (message.model || "assistant");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    if (message.attachments && message.attachments.length) {
      const media = document.createElement("div");
      media.className = "media";
      media.append(...message.attachments.map(mediaElement));
      bubble.append(media);
    }
    const content = document.createElement("div");
    content.className = "content";
    bubble.append(content);
    const meta = document.createElement("div");
    meta.className = "meta";
    el.append(role, bubble, meta);
    message.el = el;
    state.messages.push(message);
    els.transcript.append(el);
    renderMessage(message);
    els.transcript.scrollTop = els.transcript.scrollHeight;
  }

  function formatStats(message) {
    const stats = message.stats;
    if (!stats) return "";
    const parts = [];
    if (stats.usage) {
      const {prompt_tokens: prompt, completion_tokens: completion} = stats.usage;
      parts.push(t("prompt_tokens", {n: prompt}), t("completion_tokens", {n: completion}));
      if (stats.seconds > 0) parts.push(t("tokens_per_second", {n: (completion / stats.seconds).toFixed(1)}));
    }
    if (stats.firstTokenSeconds !== null) parts.push(t("first_token", {s: stats.firstTokenSeconds.toFixed(2)}));
    parts.push(t("seconds", {s: stats.seconds.toFixed(2)}));
    if (message.stopped) parts.unshift(t("stopped"));
    else if (message.finish === "length") parts.unshift(t("cut"));
    return parts.join(" \u00b7 ");
  }

  function renderMessage(message) {
    const el = message.el;
    const content = el.querySelector(".content");
    if (message.role === "user") {
      content.textContent = message.text;
    } else {
      content.innerHTML = renderMarkdown(message.text);  // renderMarkdown escapes all text it is given
      if (message.streaming) {
        const caret = document.createElement("span");
        caret.className = "caret";
        (content.lastElementChild && content.lastElementChild.tagName === "P" ? content.lastElementChild : content)
          .append(caret);
      }
    }
    content.hidden = !message.text && !message.streaming;
    let error = el.querySelector(".error");
    if (message.error && !error) {
      error = document.createElement("div");
      error.className = "error";
      el.querySelector(".bubble").append(error);
    }
    if (error) {
      error.textContent = "";
      if (message.error.status) {
        const code = document.createElement("strong");
        code.textContent = t("error", {status: message.error.status});
        error.append(code, " ");
      }
      error.append(message.error.message);
    }
    el.classList.toggle("has-error", Boolean(message.error));
    el.querySelector(".meta").textContent = formatStats(message);
  }

  let renderQueued = new Set();
  function scheduleRender(message) {
    // One render per animation frame: a fast model sends more chunks than a screen shows.
    if (!renderQueued.size) {
      requestAnimationFrame(() => {
        const pinned = isPinnedToBottom();
        for (const m of renderQueued) renderMessage(m);
        renderQueued = new Set();
        if (pinned) els.transcript.scrollTop = els.transcript.scrollHeight;
      });
    }
    renderQueued.add(message);
  }

  // ---------------------------------------------------------------- streaming
  // Server-sent events over fetch: `data: {json}` events separated by a blank line, `data: [DONE]` last.
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, {stream: true});
        let boundary;
        while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const event = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
          const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue;
          if (data === "[DONE]") return;
          onData(JSON.parse(data));
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function generationParams() {
    const params = {};
    const number = (el, parse) => {
      const value = el.value.trim() === "" ? NaN : parse(el.value);
      return Number.isFinite(value) ? value : undefined;
    };
    params.temperature = number(els.temperature, parseFloat);
    params.top_p = number(els.topP, parseFloat);
    params.max_tokens = number(els.maxTokens, (v) => parseInt(v, 10));
    params.seed = number(els.seed, (v) => parseInt(v, 10));
    for (const key of Object.keys(params)) if (params[key] === undefined) delete params[key];
    return params;
  }

  async function send() {
    if (state.controller) return;
    const text = els.input.value.trim();
    if (!text && !state.pending.length) return;
    const model = els.model.value || undefined;
    const user = {role: "user", text, attachments: state.pending};
    state.pending = [];
    renderPending();
    els.input.value = "";
    autosize();
    addMessage(user);
    const body = {model, messages: requestMessages(), stream: true, stream_options: {include_usage: true},
                  ...generationParams()};
    const reply = {role: "assistant", text: "", model: model || "assistant", streaming: true};
    addMessage(reply);

    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    const started = performance.now();
    let firstTokenAt = null;
    let usage = null;
    try {
      const response = await fetch(`${API_ROOT}/chat/completions`, {
        method: "POST", headers: apiHeaders(), body: JSON.stringify(body), signal: controller.signal});
      if (!response.ok) throw new ApiError(await errorMessage(response), response.status);
      await readEvents(response.body, (chunk) => {
        if (chunk.error) throw new ApiError(chunk.error.message, chunk.error.code || null);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.index !== 0) continue;
          if (choice.delta && choice.delta.content) {
            if (firstTokenAt === null) firstTokenAt = performance.now();
            reply.text += choice.delta.content;
            scheduleRender(reply);
          }
          if (choice.finish_reason) reply.finish = choice.finish_reason;
        }
      });
    } catch (err) {
      if (err.name === "AbortError") reply.stopped = true;
      else reply.error = describeFailure(err);
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        setBusy(false);
      }
      reply.streaming = false;
      const seconds = (performance.now() - started) / 1000;
      reply.stats = {usage, seconds, firstTokenSeconds: firstTokenAt === null ? null : (firstTokenAt - started) / 1000};
      // A failed turn stays on screen but leaves the conversation the model sees.
      if (reply.error && !reply.text) user.excluded = reply.excluded = true;
      renderQueued.delete(reply);
      renderMessage(reply);
      if (isPinnedToBottom()) els.transcript.scrollTop = els.transcript.scrollHeight;
    }
  }

  function stop() {
    // Aborting the fetch closes the connection; the server then aborts the generation.
    if (state.controller) state.controller.abort();
  }

  function clearConversation() {
    stop();
    for (const message of state.messages) message.el.remove();
    state.messages = [];
    clearNotice();
    els.empty.hidden = false;
    els.input.focus();
  }

  function setBusy(busy) {
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    document.body.classList.toggle("busy", busy);
  }

  function autosize() {
    els.input.style.height = "auto";
    els.input.style.height = `${Math.min(els.input.scrollHeight, 200)}px`;
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    els.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
    els.apiKey.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, els.apiKey.value.trim()));
    els.apiKey.addEventListener("change", loadModels);
    els.server.textContent = `API: ${API_ROOT}`;

    els.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      send();
    });
    els.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    });
    els.input.addEventListener("input", autosize);
    els.stop.addEventListener("click", stop);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.controller) stop();
    });
    els.clear.addEventListener("click", clearConversation);
    els.attach.addEventListener("click", () => els.file.click());
    els.file.addEventListener("change", async () => {
      await addFiles([...els.file.files]);
      els.file.value = "";
    });

    let dragDepth = 0;
    const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
    els.chat.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      dragDepth++;
      els.overlay.hidden = false;
    });
    els.chat.addEventListener("dragover", (event) => {
      if (hasFiles(event)) event.preventDefault();
    });
    els.chat.addEventListener("dragleave", () => {
      dragDepth = Math.max(0, dragDepth - 1);
      if (!dragDepth) els.overlay.hidden = true;
    });
    els.chat.addEventListener("drop", (event) => {
      event.preventDefault();
      dragDepth = 0;
      els.overlay.hidden = true;
      if (event.dataTransfer && event.dataTransfer.files.length) addFiles([...event.dataTransfer.files]);
    });

    loadModels();
    els.input.focus();
  }

  // For tests and the curious: the renderer and the conversation as the page holds it.
  window.swiftops = {renderMarkdown, state};
  init();
})();
