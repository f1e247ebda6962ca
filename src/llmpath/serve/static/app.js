// The llmpath playground: what the page does. Plain ES2020 in one file, no framework, no build step.
// It talks only to `llmpath serve` (the contract: /v1/* OpenAI-style endpoints and /api/*).
// Sections: 1 text in two languages · 2 small helpers · 3 the server (JSON and SSE streams) · 4 tabs ·
// 5 token spans and their tooltip · 6 generate & chat · 7 look inside · 8 runs · 9 charts · 10 start.
"use strict";

/* ---------- 1. Text in two languages: every string the page shows, looked up by key ---------- */

const TEXT = {
  zh: {
    tabs_label: "页面", tab_chat: "生成与对话", tab_inspect: "模型内部", tab_runs: "训练记录", close: "关闭",
    run: "模型（训练记录）", compare: "对比模型（可选）", compare_none: "（不对比）",
    temperature: "温度 temperature", top_p: "top_p（核采样）",
    max_tokens: "最多生成的词元数 max_tokens", seed: "随机种子 seed（可选）", optional: "可选",
    stop: "停止词 stop（可选）", stop_ph: "例如 \\n",
    prob_legend: "每个生成的词元按模型给它的概率上色（红 = 低，绿 = 高）。鼠标悬停或用 Tab 键聚焦，可看概率和备选词元。",
    prompt: "提示词", prompt_ph: "写个开头，模型接着往下写……", generate: "生成", stop_gen: "停止",
    enter_hint: "Enter 发送，Shift+Enter 换行",
    system: "系统消息（可选）", system_ph: "例如：你是一个乐于助人的助手。", message: "你的消息",
    message_ph: "说点什么……", send: "发送", reset: "清空对话", role_user: "你", role_assistant: "模型",
    no_gen_runs: "runs/ 里还没有能生成文本的模型。先训练一个，例如：llmpath gpt --preset=tiny",
    model_info: "类型：{kind} · 上下文长度 block_size = {block}", kind_chat: "对话（chat 模板）", kind_text: "续写",
    finish_stop: "〔停止：遇到停止词或结束符〕", finish_length: "〔停止：达到 max_tokens〕", finish_aborted: "〔已手动停止〕",
    finish_error: "〔出错：见页面上方的提示〕",
    view_chat: "对比：两个都是对话模型，用对话视图。你的每条消息同时发给两边，每一列保留它自己模型的回答；两边用同一组采样设置。",
    view_text_both: "对比：两个都是续写模型，用续写视图：同一个提示词，两边用同一组采样设置各自往下写。",
    view_text_one: "对比：{run} 是续写模型，所以两边都用续写视图（对话模型也能通过 /v1/completions 直接续写原文）；两边用同一组采样设置。",
    prob: "概率", alts: "最可能的几个词元", network_error: "连不上服务器：{msg}",
    text: "文本", views_label: "视图", view_tokens: "分词器", view_attention: "注意力", view_kv: "KV 缓存",
    no_inspect_runs: "runs/ 里还没有可以查看内部的模型。",
    tok_count: "{tokens} 个词元 · {chars} 个字符（平均每个词元 {ratio} 个字符）",
    kind_causal: "因果注意力（每个词元只看它自己和前面的）", kind_bidirectional: "双向注意力（每个词元看全部）",
    kind_encoder: "编码器注意力（看全部输入）",
    att_caption: "{kind}：{L} 层 × {H} 个头。每张小图的一行是一个查询词元，列是它看向的词元；每行按该行最大权重着色，越深越多。点一张小图放大。",
    att_title: "第 {layer} 层 · 第 {head} 个头（从 0 数）", att_cell: "放大第 {layer} 层第 {head} 个头",
    att_tokens_hint: "点一个词元（或用 ← → 键），看它在这个头里看向哪里：底色越深，注意力越多。",
    att_tokens_label: "提示词的词元", att_token: "{tok}，注意力权重 {w}",
    att_big: "第 {layer} 层第 {head} 个头的注意力图",
    kv_x: "词元数", kv_y: "KV 缓存大小", kv_prompt: "这段文本",
    kv_formula: "每个词元的缓存 = 2 × n_layer × n_kv_head × head_dim × 每个数的字节数",
    kv_why: "2 是因为每一层都要存 K 和 V 两份。", kv_at_prompt: "这段文本（{n} 个词元）",
    kv_at_block: "写满 block_size（{n} 个词元）", kv_per_token: "每个词元",
    runs_pick: "训练记录", metrics_pick: "曲线", layout: "排列方式", side_by_side: "并排（每个记录一张图）",
    overlaid: "叠在一张图里", report: "打开导览报告（tour report）", pick_a_run: "勾选左边的训练记录，这里画出它的训练曲线。",
    no_metrics: "没有 metrics.jsonl", unfinished: "未完成", step: "训练步数 step", no_points: "所选曲线没有数据。",
  },
  en: {
    tabs_label: "Pages", tab_chat: "Generate & chat", tab_inspect: "Look inside", tab_runs: "Runs", close: "Close",
    run: "Run", compare: "Compare with (optional)", compare_none: "(none)",
    temperature: "Temperature", top_p: "top_p (nucleus)", max_tokens: "Max tokens",
    seed: "Seed (optional)", optional: "optional", stop: "Stop sequence (optional)", stop_ph: "e.g. \\n",
    prob_legend: "Each generated token is coloured by the model's probability for it (red = low, green = high). Hover it or Tab to it to see the probability and the alternatives.",
    prompt: "Prompt", prompt_ph: "Write a beginning; the model carries on…", generate: "Generate", stop_gen: "Stop",
    enter_hint: "Enter sends, Shift+Enter adds a line",
    system: "System message (optional)", system_ph: "e.g. You are a helpful assistant.", message: "Your message",
    message_ph: "Say something…", send: "Send", reset: "Reset the chat", role_user: "You", role_assistant: "Model",
    no_gen_runs: "No run in runs/ can generate text yet. Train one first, e.g. llmpath gpt --preset=tiny",
    model_info: "kind: {kind} · block_size = {block}", kind_chat: "chat (chat template)", kind_text: "text continuation",
    finish_stop: "[stopped: stop sequence or end token]", finish_length: "[stopped: max_tokens reached]",
    finish_aborted: "[stopped by you]", finish_error: "[error: see the message at the top]",
    view_chat: "Comparing: both are chat models, so the conversation view: each message you send goes to both, and each column keeps its own run's answers; both use the same sampling settings.",
    view_text_both: "Comparing: both are text models, so the text view: the same prompt, continued by each run with the same sampling settings.",
    view_text_one: "Comparing: {run} is a text model, so both use the text view (a chat model can continue raw text through /v1/completions too), with the same sampling settings.",
    prob: "probability", alts: "most likely tokens", network_error: "Cannot reach the server: {msg}",
    text: "Text", views_label: "Views", view_tokens: "Tokenizer", view_attention: "Attention", view_kv: "KV cache",
    no_inspect_runs: "No run in runs/ can be looked inside yet.",
    tok_count: "{tokens} tokens · {chars} characters ({ratio} characters per token)",
    kind_causal: "Causal attention (each token sees itself and the tokens before it)",
    kind_bidirectional: "Bidirectional attention (each token sees all tokens)",
    kind_encoder: "Encoder attention (sees the whole input)",
    att_caption: "{kind}: {L} layers × {H} heads. In each small map a row is a query token and the columns are the tokens it looks at; each row is shaded relative to its largest weight, darker = more. Click a map to enlarge it.",
    att_title: "Layer {layer} · head {head} (counting from 0)", att_cell: "Enlarge layer {layer} head {head}",
    att_tokens_hint: "Click a token (or use ← →) to see where it looks in this head: the darker the shading, the more attention.",
    att_tokens_label: "The prompt's tokens", att_token: "{tok}, attention weight {w}",
    att_big: "Attention map of layer {layer} head {head}",
    kv_x: "tokens", kv_y: "KV cache size", kv_prompt: "this text",
    kv_formula: "cache per token = 2 × n_layer × n_kv_head × head_dim × bytes per value",
    kv_why: "2 because every layer stores both K and V.", kv_at_prompt: "This text ({n} tokens)",
    kv_at_block: "A full block_size ({n} tokens)", kv_per_token: "Per token",
    runs_pick: "Runs", metrics_pick: "Curves", layout: "Layout", side_by_side: "Side by side (a chart per run)",
    overlaid: "Overlaid in one chart", report: "Open the tour report", pick_a_run: "Tick a run on the left to draw its training curves here.",
    no_metrics: "no metrics.jsonl", unfinished: "unfinished", step: "step", no_points: "None of the chosen curves has data.",
  },
};

let lang = "zh";
try { lang = localStorage.getItem("llmpath.lang") === "en" ? "en" : "zh"; } catch (_) { /* storage blocked: keep 中文 */ }

/** The text for `key` in the current language, with {name} filled from `vars`. */
function t(key, vars = {}) {
  const s = TEXT[lang][key] ?? TEXT.en[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));
}

const rerender = [];  // functions that redraw text built in JS; called when the language changes

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-ph]")) e.placeholder = t(e.dataset.i18nPh);
  for (const e of document.querySelectorAll("[data-i18n-aria]")) e.setAttribute("aria-label", t(e.dataset.i18nAria));
  for (const b of document.querySelectorAll(".lang button")) b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
  rerender.forEach(f => f());
}

/* ---------- 2. Small helpers: elements, numbers, the alert area ---------- */

const $ = id => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";

/** el("span", {class: "x", onclick: f}, "text", child) -> a new element. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function debounce(fn, ms) {
  let timer = 0;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

/** Make a token's invisible characters visible: " a\n" -> "␣a↵". */
const showTok = s => s.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
const pct = p => (p >= 0.0001 ? `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)}%` : "<0.01%");
const fmtNum = v => (Math.abs(v) >= 1e4 ? `${+(v / 1e3).toPrecision(3)}k` : String(+v.toPrecision(4)));

function fmtBytes(b) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (Math.abs(b) >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
  return `${+b.toPrecision(4)} ${units[i]}`;
}

/** Red (p = 0) through yellow to green (p = 1), light enough to read dark text on. */
const probColor = p => `hsl(${Math.round(120 * Math.min(Math.max(p, 0), 1))}, 75%, 82%)`;

function showError(message) {
  $("alert-text").textContent = message;
  $("alert").hidden = false;
}

/* ---------- 3. The server: JSON requests and OpenAI-style SSE streams ---------- */

class ApiError extends Error {}

/** The error's message from the server's JSON ({"error": {"message": ...}}), or the status line. */
async function errorMessage(resp) {
  const body = await resp.text();
  try {
    return JSON.parse(body).error.message;
  } catch (_) {  // not our JSON (a proxy, a crash page): show the start of what came
    return `${resp.status} ${resp.statusText} ${body.slice(0, 200)}`;
  }
}

async function request(path, body, signal) {
  const init = body === undefined ? {signal}
    : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body), signal};
  let resp;
  try { resp = await fetch(path, init); } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(t("network_error", {msg: e.message}));
  }
  if (!resp.ok) throw new ApiError(await errorMessage(resp));
  return resp;
}

const getJSON = async path => (await request(path)).json();
const postJSON = async (path, body) => (await request(path, body)).json();

/** POST with stream: true and call onChunk(json) for each `data: {...}` line until `data: [DONE]`. */
async function stream(path, body, onChunk, signal) {
  const reader = (await request(path, {...body, stream: true}, signal)).body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += decoder.decode(value, {stream: true});
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {  // a chunk may end mid-line: keep the rest for the next read
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (!line.startsWith("data:")) continue;  // blank separators and SSE comments
      const data = line.slice(5).trim();
      if (data === "[DONE]") { reader.cancel().catch(() => {}); return; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message);
      onChunk(chunk);
    }
  }
}

const errorText = e => (e instanceof ApiError ? e.message : String(e.message || e));

/** Run a user action; any failure goes to the alert area, never to the console. */
async function guard(fn) {
  try {
    $("alert").hidden = true;
    await fn();
  } catch (e) {
    if (e.name !== "AbortError") showError(errorText(e));
  }
}

/* ---------- 4. Tabs: role="tab" buttons, arrow keys move between them (roving tabindex) ---------- */

function setupTabs(list, onSelect) {
  const tabs = [...list.querySelectorAll('[role="tab"]')];
  const select = (tab, focus) => {
    for (const x of tabs) {
      const on = x === tab;
      x.setAttribute("aria-selected", String(on));
      x.tabIndex = on ? 0 : -1;
      $(x.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    onSelect(tab);
  };
  list.addEventListener("click", e => {
    const tab = e.target.closest('[role="tab"]');
    if (tab && !tab.disabled) select(tab, false);
  });
  list.addEventListener("keydown", e => {
    const usable = tabs.filter(x => !x.disabled);
    const i = usable.indexOf(document.activeElement);
    const next = {ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: usable.length - 1}[e.key];
    if (i < 0 || next === undefined) return;
    e.preventDefault();
    select(usable[(next + usable.length) % usable.length], true);
  });
  return select;
}

/* ---------- 5. Token spans: coloured by probability, a tooltip with the alternatives ---------- */

/** One generated token: {token, p, alts: [[token, p], ...]} -> a focusable span carrying its data. */
function tokenSpan({token, p, alts}) {
  return el("span", {class: "tok", tabindex: "0", style: `background:${probColor(p)}`,
    "data-p": p.toFixed(6), "data-alts": JSON.stringify(alts)}, token);
}

/** Completions logprobs ({tokens, token_logprobs, top_logprobs: [{piece: lp}]}) -> [{token, p, alts}]. */
const textLogprobs = lp => (lp && lp.tokens ? lp.tokens.map((token, i) => ({
  token, p: Math.exp(lp.token_logprobs[i]),
  alts: Object.entries((lp.top_logprobs || [])[i] || {}).map(([k, v]) => [k, Math.exp(v)]).sort((a, b) => b[1] - a[1]),
})) : null);

/** Chat logprobs ({content: [{token, logprob, top_logprobs: [{token, logprob}]}]}) -> [{token, p, alts}]. */
const chatLogprobs = lp => (lp && lp.content ? lp.content.map(x => ({
  token: x.token, p: Math.exp(x.logprob), alts: (x.top_logprobs || []).map(a => [a.token, Math.exp(a.logprob)]),
})) : null);

/** Append a streamed piece: one span per token when the pieces add up to the text, else plain text. */
function appendPiece(box, text, toks) {
  if (!text) return;
  if (toks && toks.length === 1) box.append(tokenSpan({...toks[0], token: text}));
  else if (toks && toks.length && toks.map(x => x.token).join("") === text) toks.forEach(x => box.append(tokenSpan(x)));
  else if (toks && toks.length) {
    // byte-level BPE wrote one character in several tokens (each a part of its UTF-8 bytes): one span whose
    // probability is the product of theirs, with the alternatives of the first, where the character was chosen
    box.append(tokenSpan({token: text, p: toks.reduce((acc, x) => acc * x.p, 1), alts: toks[0].alts}));
  }
  else box.append(el("span", {class: "plain"}, text));  // no per-token numbers came with this piece
  box.scrollTop = box.scrollHeight;
}

const tip = () => $("tip");

function showTip(span) {
  const rows = JSON.parse(span.dataset.alts).map(([tok, p]) =>
    el("tr", {class: tok === span.textContent ? "chosen" : ""},
      el("td", {class: "mono"}, showTok(tok)), el("td", {}, pct(p))));
  tip().replaceChildren(
    el("div", {class: "tip-p"}, `${showTok(span.textContent)} · ${t("prob")} ${pct(+span.dataset.p)}`),
    el("div", {class: "tip-h"}, t("alts")), el("table", {}, ...rows));
  tip().hidden = false;
  const r = span.getBoundingClientRect();  // below the token, kept inside the window
  tip().style.left = `${Math.max(4, Math.min(r.left, innerWidth - tip().offsetWidth - 8)) + scrollX}px`;
  tip().style.top = `${r.bottom + scrollY + 6}px`;
  span.setAttribute("aria-describedby", "tip");
}

function setupTooltip() {
  const hide = () => { tip().hidden = true; };
  const onTok = f => e => { const s = e.target.closest && e.target.closest(".tok"); if (s) f(s); };
  document.addEventListener("mouseover", onTok(showTip));
  document.addEventListener("focusin", onTok(showTip));
  document.addEventListener("mouseout", onTok(hide));
  document.addEventListener("focusout", onTok(hide));
  document.addEventListener("keydown", e => { if (e.key === "Escape") hide(); });
}

/* ---------- 6. Generate & chat: a run picker, sampling controls, a prompt box or a conversation ---------- */

const gen = {models: [], controller: null, chat: false, cols: []};

/** Column `i` (0: the first run, 1: the run compared with it): its text box, its conversation, its headings. */
const COLS = [
  {out: "text-out", messages: "messages", heads: ["text-head-a", "chat-head-a"], boxes: []},
  {out: "text-out-b", messages: "messages-b", heads: ["text-head-b", "chat-head-b"],
    boxes: ["text-col-b", "chat-col-b"]},  // only shown when comparing
];

async function loadModels() {
  gen.models = (await getJSON("/v1/models")).data;
  const options = () => gen.models.map(m => el("option", {value: m.id}, m.id));
  $("gen-model").replaceChildren(...options());
  $("gen-compare").replaceChildren(el("option", {value: "", "data-i18n": "compare_none"}, t("compare_none")),
    ...options());
  $("gen-empty").hidden = gen.models.length > 0;
  onModelChange();
}

const currentModel = () => gen.models.find(m => m.id === $("gen-model").value);
const compareModel = () => gen.models.find(m => m.id === $("gen-compare").value);

function renderModelInfo() {
  const info = m => (m ? t("model_info", {kind: t(`kind_${m.kind}`), block: m.block_size}) : "");
  $("gen-model-info").textContent = info(currentModel());
  $("gen-compare-info").textContent = info(compareModel());
  const [a, b] = gen.cols.map(c => c.model);
  const hint = $("gen-view-hint");
  hint.hidden = !b;
  if (!b) return;
  const text = [a, b].filter(m => m.kind !== "chat");
  hint.textContent = gen.chat ? t("view_chat")
    : text.length === 2 ? t("view_text_both") : t("view_text_one", {run: text[0].id});
}

/** One run or two: the chat view only when every chosen run chats (a chat model continues raw text too). */
function onModelChange() {
  const runs = [currentModel(), compareModel()].filter(Boolean);
  gen.cols = runs.map((model, i) => ({model, i, history: []}));
  gen.chat = runs.length > 0 && runs.every(m => m.kind === "chat");
  const comparing = runs.length === 2;
  $("text-view").hidden = !runs.length || gen.chat;
  $("chat-view").hidden = !gen.chat;
  for (const id of ["text-cols", "chat-cols"]) $(id).classList.toggle("compare", comparing);
  COLS.forEach((c, i) => {
    for (const id of c.boxes) $(id).hidden = !comparing;
    for (const id of c.heads) {
      $(id).hidden = !comparing;  // one run: its name is in the picker already
      $(id).textContent = runs[i] ? runs[i].id : "";
    }
  });
  renderModelInfo();
  if (runs.length) {  // a chat reply must fit in every block_size (a text continuation may slide past it):
    const block = Math.min(...runs.map(m => m.block_size));  // keep the default well inside the smaller
    const box = $("gen-max-tokens");
    box.max = runs.every(m => m.kind === "chat") ? block : 1024;
    box.value = Math.min(parseInt(box.value, 10) || 16, Math.max(1, Math.floor(block / 2)));
  }
  resetChat();
  for (const c of COLS) $(c.out).replaceChildren();
}

/** The sampling options from the controls for `model`; seed and stop only when filled in. */
function sampling(model) {
  const num = (id, fallback) => (Number.isFinite(parseFloat($(id).value)) ? parseFloat($(id).value) : fallback);
  const body = {model, temperature: num("gen-temperature", 1), top_p: num("gen-top-p", 1),
    max_tokens: Math.round(num("gen-max-tokens", 16))};
  if ($("gen-seed").value.trim() !== "") body.seed = parseInt($("gen-seed").value, 10);
  // "\n" typed in the box means a newline: a real newline cannot be typed into a one-line field
  if ($("gen-stop").value) body.stop = $("gen-stop").value.replace(/\\n/g, "\n").replace(/\\t/g, "\t");
  return body;
}

function setBusy(busy) {
  for (const b of document.querySelectorAll(".stop-btn")) b.disabled = !busy;
  $("text-send").disabled = busy;
  $("chat-send").disabled = busy;
  // a new run or a reset mid-stream would clear the columns that the answers still coming are written into
  $("chat-reset").disabled = busy;
  $("gen-model").disabled = busy;
  $("gen-compare").disabled = busy;
}

/** Stream one generation into `box`; a note at the end says why it stopped (Stop is not an error). */
async function runStream(path, body, box, onChoice, signal) {
  const note = reason => box.append(
    el("span", {class: "finish", "data-i18n": `finish_${reason}`}, t(`finish_${reason}`)));
  try {
    await stream(path, body, chunk => {
      onChoice(chunk.choices[0]);
      if (chunk.choices[0].finish_reason) note(chunk.choices[0].finish_reason);
    }, signal);
  } catch (e) {
    note(e.name === "AbortError" ? "aborted" : "error");
    if (e.name !== "AbortError") throw e;
  }
}

/** Run `one(col, signal)` for every column at once (two fetches when comparing); Stop aborts them all. A column's
 *  error goes to the alert area as it happens (with its run id when comparing) and the other column carries on.
 *  Resolves to one boolean per column: did it end without an error. */
async function streamColumns(one) {
  gen.controller = new AbortController();
  const signal = gen.controller.signal;
  const errors = [];
  setBusy(true);
  try {
    return await Promise.all(gen.cols.map(async col => {
      try {
        await one(col, signal);
        return true;
      } catch (e) {
        errors.push(gen.cols.length > 1 ? `${col.model.id}: ${errorText(e)}` : errorText(e));
        showError(errors.join("\n"));
        return false;
      }
    }));
  } finally {
    gen.controller = null;
    setBusy(false);
  }
}

async function generateText() {
  const prompt = $("prompt").value;
  if (!prompt || gen.controller) return;
  await streamColumns((col, signal) => {
    const out = $(COLS[col.i].out);
    out.replaceChildren(el("span", {class: "prompt-echo"}, prompt));
    return runStream("/v1/completions", {...sampling(col.model.id), prompt, logprobs: 5}, out,
      c => appendPiece(out, c.text, textLogprobs(c.logprobs)), signal);
  });
}

function resetChat() {
  for (const col of gen.cols) col.history = [];
  for (const c of COLS) $(c.messages).replaceChildren();
}

function addMessage(col, role, content) {
  const body = el("div", {class: "body"}, content);
  const who = el("div", {class: "who", "data-i18n": `role_${role}`}, t(`role_${role}`));
  const msg = el("div", {class: `msg ${role}`}, who, body);
  $(COLS[col.i].messages).append(msg);
  return msg;
}

/** Send the user's message to every column's run, each with its own history (its own model's earlier answers). */
async function sendChat() {
  const text = $("chat-input").value.trim();
  if (!text || gen.controller) return;
  $("chat-input").value = "";
  const system = $("system").value.trim();
  const turns = gen.cols.map(col => ({asked: addMessage(col, "user", text), answer: addMessage(col, "assistant", "")}));
  const ok = await streamColumns(async (col, signal) => {
    const box = turns[col.i].answer.querySelector(".body");
    const history = [...col.history, {role: "user", content: text}];
    const messages = system ? [{role: "system", content: system}, ...history] : history;
    let reply = "";
    await runStream("/v1/chat/completions", {...sampling(col.model.id), messages, logprobs: true, top_logprobs: 5},
      box, c => {
        const piece = (c.delta && c.delta.content) || "";
        reply += piece;
        appendPiece(box, piece, chatLogprobs(c.logprobs));
        $(COLS[col.i].messages).scrollTop = $(COLS[col.i].messages).scrollHeight;
      }, signal);
    col.history = [...history, {role: "assistant", content: reply}];  // a failed column leaves this turn out
  });
  if (!ok.some(Boolean)) {
    // nothing came back from any run: take the question out again so the user can fix the settings and resend
    for (const {asked, answer} of turns) { asked.remove(); answer.remove(); }
    $("chat-input").value = text;
  }
}

/** Enter runs `send`, Shift+Enter keeps the newline; an input method composing Chinese keeps its Enter. */
function enterSends(textarea, send) {
  textarea.addEventListener("keydown", e => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); guard(send); }
  });
}

/* ---------- 7. Look inside: the tokenizer, the attention explorer, the KV cache ---------- */

const ins = {runs: [], view: "tokens", seq: 0, data: {}, layer: 0, head: 0, query: 0, selectSub: null};
const INSPECT_PATH = {tokens: "/api/tokenize", attention: "/api/attention", kv: "/api/kv"};

function fillInspectRuns(runs) {
  const sel = $("ins-model");
  const keep = sel.value;
  ins.runs = runs.filter(r => r.inspect && r.inspect.length);
  sel.replaceChildren(...ins.runs.map(r => el("option", {value: r.id}, r.id)));
  if (ins.runs.some(r => r.id === keep)) sel.value = keep;
  $("ins-empty").hidden = ins.runs.length > 0;
  if (keep !== sel.value) onInspectRunChange();
}

const inspectRun = () => ins.runs.find(r => r.id === $("ins-model").value);

function onInspectRunChange() {
  const can = (inspectRun() || {inspect: []}).inspect;
  for (const view of Object.keys(INSPECT_PATH)) $(`sub-${view}`).disabled = !can.includes(view);
  ins.data = {};
  if (!can.includes(ins.view) && can.length) ins.selectSub($(`sub-${can[0]}`), false);
  else guard(refreshInspect);
}

/** Ask the server about the text for the view on show; an answer to an older text is dropped. */
async function refreshInspect() {
  const run = inspectRun();
  const text = $("ins-text").value;
  if (!run || $("panel-inspect").hidden || !run.inspect.includes(ins.view)) return;
  const seq = ++ins.seq;
  const data = text ? await postJSON(INSPECT_PATH[ins.view], {model: run.id, text}) : null;
  if (seq !== ins.seq) return;
  if (ins.view === "attention" && data) {  // keep the chosen head; a new token count picks the last token
    const before = ins.data.attention;
    ins.layer = Math.min(ins.layer, data.n_layer - 1);
    ins.head = Math.min(ins.head, data.n_head - 1);
    if (!before || before.tokens.length !== data.tokens.length) ins.query = data.tokens.length - 1;
  }
  ins.data[ins.view] = data;
  drawInspect();
}

function drawInspect() {
  ({tokens: drawTokens, attention: drawAttention, kv: drawKV})[ins.view](ins.data[ins.view]);
}

function drawTokens(d) {
  $("tok-count").textContent = d ? t("tok_count", {tokens: d.count, chars: d.chars,
    ratio: (d.chars / Math.max(d.count, 1)).toFixed(2)}) : "";
  $("tok-chips").replaceChildren(...(d ? d.tokens : []).map((tok, i) =>
    el("span", {class: `chip c${i % 4}`}, el("span", {class: "chip-text"}, showTok(tok.text)),
      el("span", {class: "chip-id"}, String(tok.id)))));
}

/** Paint one T x T map: white -> blue, each row scaled by its own largest weight; outline row `query`. */
function paintMap(canvas, map, query) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const T = map.length;
  if (!T) return;
  const img = new ImageData(T, T);
  map.forEach((row, i) => {
    const max = Math.max(...row) || 1;
    row.forEach((w, j) => {
      const v = w / max;
      img.data.set([255 - v * 218, 255 - v * 156, 255 - v * 20, 255], 4 * (i * T + j));
    });
  });
  const small = el("canvas", {width: T, height: T});
  small.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;  // keep the cells sharp when scaled up
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  if (query >= 0) {
    const h = canvas.height / T;
    ctx.strokeStyle = "#d97706";
    ctx.lineWidth = 2;
    ctx.strokeRect(1, query * h + 1, canvas.width - 2, Math.max(h - 2, 1));
  }
}

function drawAttention(d) {
  const grid = $("att-grid");
  $("att-caption").textContent = d ? t("att_caption", {kind: t(`kind_${d.kind}`), L: d.n_layer, H: d.n_head}) : "";
  if (!d) { grid.replaceChildren(); $("att-tokens").replaceChildren(); $("att-title").textContent = ""; return; }
  grid.style.gridTemplateColumns = `auto repeat(${d.n_head}, auto)`;
  const cells = [el("span"), ...Array.from({length: d.n_head}, (_, h) => el("span", {class: "axis"}, `H${h}`))];
  d.maps.forEach((heads, l) => {
    cells.push(el("span", {class: "axis"}, `L${l}`));
    heads.forEach((map, h) => {
      const canvas = el("canvas", {width: 56, height: 56});
      paintMap(canvas, map, -1);
      cells.push(el("button", {type: "button", class: "cell", "data-layer": l, "data-head": h,
        "aria-label": t("att_cell", {layer: l, head: h}),
        onclick: () => { ins.layer = l; ins.head = h; drawAttentionFocus(); }}, canvas));
    });
  });
  grid.replaceChildren(...cells);
  // the prompt's tokens: one button each, a roving tabindex so ← → walk along them
  $("att-tokens").replaceChildren(...d.tokens.map((tok, j) => el("button", {type: "button", class: "att-tok",
    "data-index": j, onclick: () => { ins.query = j; drawAttentionFocus(); }}, showTok(tok))));
  drawAttentionFocus();
}

/** Redraw what depends on the chosen head and token: the big map and the shading behind the tokens. */
function drawAttentionFocus() {
  const d = ins.data.attention;
  if (!d) return;
  const map = d.maps[ins.layer][ins.head];
  for (const b of $("att-grid").querySelectorAll(".cell")) {
    b.setAttribute("aria-pressed", String(+b.dataset.layer === ins.layer && +b.dataset.head === ins.head));
  }
  $("att-title").textContent = t("att_title", {layer: ins.layer, head: ins.head});
  $("att-canvas").setAttribute("aria-label", t("att_big", {layer: ins.layer, head: ins.head}));
  paintMap($("att-canvas"), map, ins.query);
  const row = map[ins.query] || [];
  const max = Math.max(...row) || 1;
  for (const b of $("att-tokens").querySelectorAll(".att-tok")) {
    const j = +b.dataset.index;
    const w = row[j] || 0;
    const alpha = 0.85 * w / max;
    b.style.background = `rgba(37, 99, 235, ${alpha.toFixed(3)})`;
    b.style.color = alpha > 0.45 ? "#fff" : "";
    b.dataset.w = w.toFixed(4);
    b.classList.toggle("query", j === ins.query);
    b.setAttribute("aria-pressed", String(j === ins.query));
    b.setAttribute("aria-label", t("att_token", {tok: b.textContent, w: pct(w)}));
    b.tabIndex = j === ins.query ? 0 : -1;
  }
}

function onAttTokenKey(e) {
  const d = ins.data.attention;
  const step = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[e.key];
  if (!d || step === undefined) return;
  e.preventDefault();
  ins.query = (ins.query + step + d.tokens.length) % d.tokens.length;
  drawAttentionFocus();
  $("att-tokens").querySelector(`[data-index="${ins.query}"]`).focus();
}

function drawKV(d) {
  if (!d) { $("kv-chart").replaceChildren(); $("kv-numbers").replaceChildren(); return; }
  const bpt = d.bytes_per_token;
  const n = Math.min(d.prompt_tokens, d.block_size);
  // the y axis in one unit (KiB, MiB...) so that its ticks land on round numbers of that unit
  const top = Math.max(...d.points.map(p => p[1]), 1);
  const k = Math.min(Math.floor(Math.log(top) / Math.log(1024)), 3);
  const unit = ["B", "KiB", "MiB", "GiB"][k];
  const points = d.points.map(([T, b]) => [T, b / 1024 ** k]);
  $("kv-chart").replaceChildren(lineChart([{label: `${t("kv_y")} (${unit})`, color: "#2563eb", points}],
    {xLabel: t("kv_x"), yFormat: v => `${fmtNum(v)} ${unit}`,
      marker: {x: n, y: n * bpt / 1024 ** k, label: `${t("kv_prompt")}: ${d.prompt_tokens}`}}));
  const row = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  $("kv-numbers").replaceChildren(
    ...row(t("kv_formula"), `2 × ${d.n_layer} × ${d.n_kv_head} × ${d.head_dim} × ${d.bytes_per_value} = ${bpt} B`),
    el("dd", {class: "hint"}, t("kv_why")),
    ...row(t("kv_per_token"), fmtBytes(bpt)),
    ...row(t("kv_at_prompt", {n: d.prompt_tokens}), fmtBytes(d.prompt_tokens * bpt)),
    ...row(t("kv_at_block", {n: d.block_size}), fmtBytes(d.block_size * bpt)));
}

/* ---------- 8. Runs: tick runs, pick curves, draw them side by side or overlaid ---------- */

const runsPage = {runs: [], checked: new Set(), rows: new Map(), keys: new Set(["train_loss", "val_loss"])};
const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const DASHES = ["", "6 4", "2 3", "10 3 2 3"];

async function loadRuns() {
  const d = await getJSON("/api/runs");
  runsPage.runs = d.runs;
  $("report-link").hidden = !d.report;
  if (d.report) $("report-link").querySelector("a").href = d.report;
  fillInspectRuns(d.runs);
  drawRunList();
}

function drawRunList() {
  $("run-list").replaceChildren(...runsPage.runs.map((r, i) => {
    const box = el("input", {type: "checkbox", id: `run-${i}`, value: r.id});
    box.checked = runsPage.checked.has(r.id);
    box.disabled = !r.metrics;
    box.addEventListener("change", () => {
      if (box.checked) runsPage.checked.add(r.id); else runsPage.checked.delete(r.id);
      guard(updateCurves);
    });
    const scalars = Object.entries(r.results || {}).filter(([, v]) => typeof v === "number").slice(0, 2)
      .map(([k, v]) => `${k} ${fmtNum(v)}`);
    const notes = [...scalars, r.metrics ? "" : t("no_metrics"), r.finished ? "" : t("unfinished")].filter(Boolean);
    const label = el("label", {for: `run-${i}`}, r.id, el("span", {class: "hint"}, notes.join(" · ")));
    return el("div", {class: "check"}, box, label);
  }));
}

async function updateCurves() {
  for (const id of runsPage.checked) {
    if (runsPage.rows.has(id)) continue;
    const path = id.split("/").map(encodeURIComponent).join("/");
    runsPage.rows.set(id, (await getJSON(`/api/runs/${path}/metrics`)).rows);
  }
  drawMetricList();
  drawCurves();
}

/** Every numeric key (but step) found in the ticked runs' rows, train_loss and val_loss first. */
function metricKeys() {
  const keys = new Set();
  for (const id of runsPage.checked) {
    for (const row of runsPage.rows.get(id) || []) {
      for (const [k, v] of Object.entries(row)) if (k !== "step" && typeof v === "number") keys.add(k);
    }
  }
  const first = ["train_loss", "val_loss"].filter(k => keys.has(k));
  return [...first, ...[...keys].filter(k => !first.includes(k)).sort()];
}

function drawMetricList() {
  $("metric-list").replaceChildren(...metricKeys().map((k, i) => {
    const box = el("input", {type: "checkbox", id: `metric-${i}`, value: k});
    box.checked = runsPage.keys.has(k);
    box.addEventListener("change", () => {
      if (box.checked) runsPage.keys.add(k); else runsPage.keys.delete(k);
      drawCurves();
    });
    return el("div", {class: "check"}, box, el("label", {for: `metric-${i}`, class: "mono"}, k));
  }));
}

function drawCurves() {
  const ids = runsPage.runs.map(r => r.id).filter(id => runsPage.checked.has(id) && runsPage.rows.has(id));
  const keys = metricKeys().filter(k => runsPage.keys.has(k));
  const series = (id, k, color, dash, label) => ({label, color, dash, points: runsPage.rows.get(id)
    .filter(r => typeof r.step === "number" && Number.isFinite(r[k])).map(r => [r.step, r[k]])});
  const opts = {xLabel: t("step"), width: 460, height: 280};
  let charts;
  if ($("layout").value === "overlay") {
    const all = ids.flatMap((id, i) => keys.map((k, j) =>
      series(id, k, PALETTE[i % PALETTE.length], DASHES[j % DASHES.length], `${id} · ${k}`)));
    charts = [lineChart(all, {...opts, width: 900, height: 420})];
  } else {
    charts = ids.map(id => lineChart(keys.map((k, j) => series(id, k, PALETTE[j % PALETTE.length], "", k)),
      {...opts, title: id}));
  }
  $("curves").replaceChildren(...charts);
  $("curves-empty").hidden = ids.length > 0;
}

/* ---------- 9. Charts: one SVG line chart (axes, ticks, lines, an optional marker, a legend) ---------- */

/** Round [lo, hi] out to tick steps of 1, 2 or 5 x 10^k: -> {lo, hi, ticks}. */
function niceScale(lo, hi, count = 5) {
  if (!(hi > lo)) { hi = lo + 1; lo -= lo === 0 ? 0 : 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const a = Math.floor(lo / step) * step;
  const b = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = a; v <= b + step / 2; v += step) ticks.push(+v.toPrecision(12));
  return {lo: a, hi: b, ticks};
}

/** series: [{label, color, dash, points: [[x, y], ...]}] -> <figure> with an SVG chart and a legend. */
function lineChart(series, {width = 560, height = 300, xLabel = "", yFormat = fmtNum, marker = null, title = ""}) {
  const fig = el("figure", {class: "chart-fig"});
  if (title) fig.append(el("figcaption", {}, title));
  series = series.filter(s => s.points.length);
  if (!series.length) { fig.append(el("p", {class: "hint"}, t("no_points"))); return fig; }
  const xs = series.flatMap(s => s.points.map(p => p[0]));
  const ys = series.flatMap(s => s.points.map(p => p[1]));
  const X = {lo: Math.min(...xs), hi: Math.max(...xs)};
  if (!(X.hi > X.lo)) X.hi = X.lo + 1;
  X.ticks = niceScale(X.lo, X.hi).ticks.filter(v => v >= X.lo && v <= X.hi);
  const Y = niceScale(Math.min(...ys), Math.max(...ys));
  const m = {l: 70, r: 16, t: 12, b: 42};
  const sx = x => m.l + (x - X.lo) / (X.hi - X.lo) * (width - m.l - m.r);
  const sy = y => height - m.b - (y - Y.lo) / (Y.hi - Y.lo) * (height - m.t - m.b);
  const svg = svgEl("svg", {viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": [title, ...series.map(s => s.label)].filter(Boolean).join(", ")});
  for (const v of Y.ticks) {
    svg.append(svgEl("line", {x1: m.l, x2: width - m.r, y1: sy(v), y2: sy(v), class: "grid"}),
      svgEl("text", {x: m.l - 6, y: sy(v) + 4, "text-anchor": "end", class: "tick"}, yFormat(v)));
  }
  for (const v of X.ticks) {
    svg.append(svgEl("line", {x1: sx(v), x2: sx(v), y1: height - m.b, y2: height - m.b + 4, class: "axis-line"}),
      svgEl("text", {x: sx(v), y: height - m.b + 16, "text-anchor": "middle", class: "tick"}, fmtNum(v)));
  }
  svg.append(svgEl("line", {x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: "axis-line"}),
    svgEl("line", {x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: "axis-line"}),
    svgEl("text", {x: (m.l + width - m.r) / 2, y: height - 6, "text-anchor": "middle", class: "label"}, xLabel));
  for (const s of series) {
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    svg.append(svgEl("polyline", {points: pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
      fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || "", class: "curve"}));
    if (pts.length <= 40) {  // few points (e.g. evaluations): show each one
      for (const [x, y] of pts) svg.append(svgEl("circle", {cx: sx(x), cy: sy(y), r: 2.5, fill: s.color}));
    }
  }
  if (marker) {
    const x = sx(Math.min(Math.max(marker.x, X.lo), X.hi));
    svg.append(svgEl("line", {x1: x, x2: x, y1: m.t, y2: height - m.b, class: "marker"}),
      svgEl("circle", {cx: x, cy: sy(marker.y), r: 5, class: "marker-dot"}),
      svgEl("text", {x: x + 6, y: m.t + 12, class: "label"}, marker.label));
  }
  fig.append(svg, el("ul", {class: "legend"}, ...series.map(s => el("li", {},
    el("span", {class: "swatch", style: `border-top: 3px ${s.dash ? "dashed" : "solid"} ${s.color}`}), s.label))));
  return fig;
}

/* ---------- 10. Start: wire the controls, fill in the text, load the runs ---------- */

function start() {
  for (const b of document.querySelectorAll(".lang button")) {
    b.addEventListener("click", () => {
      lang = b.dataset.lang;
      try { localStorage.setItem("llmpath.lang", lang); } catch (_) { /* not remembered; still switched */ }
      applyLang();
    });
  }
  $("alert-close").addEventListener("click", () => { $("alert").hidden = true; });
  setupTooltip();

  const selectTab = setupTabs($("tabs"), tab => {
    const name = tab.id.slice(4);
    history.replaceState(null, "", `#${name}`);
    if (name === "inspect") guard(refreshInspect);
    if (name === "runs") guard(loadRuns);
  });
  ins.selectSub = setupTabs($("subtabs"), tab => { ins.view = tab.id.slice(4); guard(refreshInspect); });

  $("gen-model").addEventListener("change", onModelChange);
  $("gen-compare").addEventListener("change", onModelChange);
  $("text-send").addEventListener("click", () => guard(generateText));
  $("chat-send").addEventListener("click", () => guard(sendChat));
  $("chat-reset").addEventListener("click", resetChat);
  for (const b of document.querySelectorAll(".stop-btn")) {
    b.addEventListener("click", () => gen.controller && gen.controller.abort());
  }
  enterSends($("prompt"), generateText);
  enterSends($("chat-input"), sendChat);

  $("ins-model").addEventListener("change", onInspectRunChange);
  $("ins-text").addEventListener("input", debounce(() => guard(refreshInspect), 300));
  $("att-tokens").addEventListener("keydown", onAttTokenKey);
  $("layout").addEventListener("change", drawCurves);

  rerender.push(renderModelInfo, () => { if (ins.data[ins.view] !== undefined) drawInspect(); },
    drawRunList, drawCurves);
  applyLang();
  guard(loadModels);
  guard(loadRuns);
  const first = $(`tab-${location.hash.slice(1)}`);
  if (first) selectTab(first, false);
}

start();
