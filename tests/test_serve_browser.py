"""The playground's pages in headless Chromium against a live `llmpath serve` over tiny trained runs.

Each test opens the page at 1280x800, does what a learner does (type a prompt, click a token, tick a run),
checks what the page shows, saves a screenshot as <runs>/serve/screenshots/<test>.png and fails on any
console error or uncaught page error. Skipped where playwright or the system's chromium is missing.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serve_fixtures import running_server, tiny_runs

pytestmark = pytest.mark.slow  # tiny runs are trained once per session (~25 s), then each test takes seconds


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Site:
    url: str
    browser: object
    shots: Path


@dataclass
class Tab:
    """One fresh browser context (empty localStorage) with the page open and its errors collected."""
    page: object
    shots: Path
    errors: list = field(default_factory=list)

    def done(self, name: str, allow: tuple = ()) -> None:
        """Save the screenshot, then fail on console or page errors (`allow`: expected message prefixes)."""
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)
        errors = [e for e in self.errors if not e.startswith(allow)] if allow else self.errors
        assert not errors, errors


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not _chromium():
        pytest.skip("chromium is not installed (make test installs it where apt-get works)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    root = tiny_runs(tmp_path_factory)
    shots = root / "serve" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with running_server(root) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield Site(url, browser, shots)
        finally:
            browser.close()


@pytest.fixture
def tab(site):
    context = site.browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    t = Tab(page, site.shots)
    page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: t.errors.append(f"page error: {e}"))
    page.goto(site.url + "/", wait_until="load")
    page.wait_for_selector("#gen-model option", state="attached")  # /v1/models answered
    yield t
    context.close()


def set_sampling(page, max_tokens=24, seed=0):
    page.fill("#gen-max-tokens", str(max_tokens))
    page.fill("#gen-seed", str(seed))


def test_text_model_streams_tokens_with_their_probabilities(tab):
    page = tab.page
    assert page.locator("#tab-chat").inner_text() == "生成与对话"  # 中文 by default
    page.select_option("#gen-model", "gpt/tiny")
    assert page.is_visible("#text-view") and not page.is_visible("#chat-view")
    set_sampling(page, max_tokens=24)
    page.fill("#prompt", "To be")
    page.press("#prompt", "Enter")  # Enter sends
    page.wait_for_selector("#text-out .finish")
    assert page.inner_text("#text-out .prompt-echo") == "To be"
    tokens = page.locator("#text-out .tok")
    assert tokens.count() == 24  # a char-level model: one span per generated character, max_tokens of them
    first = tokens.first
    p = float(first.get_attribute("data-p"))
    alts = json.loads(first.get_attribute("data-alts"))
    assert 0 < p <= 1 and len(alts) == 5 and all(0 < a[1] <= 1 for a in alts)
    assert [a[1] for a in alts] == sorted((a[1] for a in alts), reverse=True)
    first.hover()  # the tooltip shows the token's probability and its alternatives
    assert page.is_visible("#tip") and page.locator("#tip tr").count() == 5 and "%" in page.inner_text("#tip")
    tab.done("generate-text")


def test_chat_model_streams_a_reply(tab):
    page = tab.page
    page.select_option("#gen-model", "chat/tiny-sft")
    assert page.is_visible("#chat-view") and not page.is_visible("#text-view")
    set_sampling(page, max_tokens=16, seed=1)
    page.fill("#system", "You are a helpful assistant.")
    page.fill("#chat-input", "Hello!")
    page.press("#chat-input", "Shift+Enter")  # a newline, not a send
    assert page.input_value("#chat-input") == "Hello!\n" and page.locator(".msg").count() == 0
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant .finish")
    assert page.inner_text(".msg.user .body") == "Hello!" and page.input_value("#chat-input") == ""
    tokens = page.locator(".msg.assistant .tok")
    assert tokens.count() >= 1 and float(tokens.first.get_attribute("data-p")) > 0
    tokens.first.focus()  # keyboard: the tooltip follows focus too
    assert page.is_visible("#tip")
    tab.done("chat")
    page.click("#chat-reset")
    assert page.locator(".msg").count() == 0 and not tab.errors


def test_an_api_error_shows_in_the_alert_area(tab):
    page = tab.page
    page.select_option("#gen-model", "gpt/tiny")
    page.fill("#gen-top-p", "7")  # the server refuses top_p outside (0, 1]
    page.fill("#prompt", "To be")
    page.click("#text-send")
    page.wait_for_selector("#alert:not([hidden])")
    assert "top_p" in page.inner_text("#alert-text")
    tab.done("api-error", allow=("Failed to load resource",))  # the browser logs the 400 itself
    page.click("#alert-close")
    assert not page.is_visible("#alert")


def compare(page, first, second):
    """Pick the run and the run to compare it with (the second picker's empty value: no comparison)."""
    page.select_option("#gen-model", first)
    page.select_option("#gen-compare", second)


def spans(page, box) -> list[dict]:
    """The token spans in `box`: their text and probability."""
    return page.eval_on_selector_all(f"{box} .tok", "ss => ss.map(s => ({text: s.textContent, p: +s.dataset.p}))")


def test_compare_two_text_runs_side_by_side(tab):
    page = tab.page
    compare(page, "chat/tiny", "gpt/tiny")
    # a continuation may slide past the context (the server allows it); the default stays inside the smaller one
    assert page.get_attribute("#gen-max-tokens", "max") == "1024" and int(page.input_value("#gen-max-tokens")) <= 16
    compare(page, "gpt/tiny", "chat/tiny")  # chat/tiny is a base model: both continue text
    assert page.is_visible("#text-view") and not page.is_visible("#chat-view")
    assert "续写视图" in page.inner_text("#gen-view-hint")
    assert page.inner_text("#text-head-a") == "gpt/tiny" and page.inner_text("#text-head-b") == "chat/tiny"
    set_sampling(page, max_tokens=24, seed=0)
    page.fill("#prompt", "To be")
    # count the columns already finished whenever the page starts a request: at the same time means none yet
    page.evaluate("""() => { const f = window.fetch; window.doneAtFetch = [];
        window.fetch = (...a) => { doneAtFetch.push(document.querySelectorAll('#text-cols .finish').length);
                                   return f(...a); }; }""")
    page.press("#prompt", "Enter")
    page.wait_for_selector("#text-out .finish")
    page.wait_for_selector("#text-out-b .finish")
    assert page.evaluate("doneAtFetch") == [0, 0]  # two fetches, both started before either stream ended
    assert page.inner_text("#text-out .prompt-echo") == page.inner_text("#text-out-b .prompt-echo") == "To be"
    assert len(spans(page, "#text-out")) == 24  # the char model: one span per token
    # chat/tiny reads bytes: a character made of several byte tokens is one span, so up to 24 spans for 24 tokens;
    # the column holds exactly what the API answers to the same prompt and settings
    answer = page.evaluate("""fetch('/v1/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({model: 'chat/tiny', prompt: 'To be', max_tokens: 24, seed: 0, temperature: 0.8})})
        .then(r => r.json())""")["choices"][0]
    b = spans(page, "#text-out-b")
    assert 1 <= len(b) <= 24 and "".join(s["text"] for s in b) == answer["text"]
    reason = page.get_attribute("#text-out-b .finish", "data-i18n")
    assert reason == f"finish_{answer['finish_reason']}" and all(0 < s["p"] <= 1 for s in b)
    page.hover("#text-out-b .tok >> nth=0")  # the same tooltip in both columns
    assert page.is_visible("#tip") and page.locator("#tip tr").count() == 5
    page.hover("#text-out .tok >> nth=3")
    assert page.inner_text("#tip .tip-p").startswith(page.inner_text("#text-out .tok >> nth=3").replace(" ", "␣"))
    tab.done("compare-text")


def test_compare_stop_stops_both_and_one_error_leaves_the_other(tab):
    page = tab.page
    compare(page, "gpt/tiny", "chat/tiny")
    set_sampling(page, max_tokens=16)
    page.fill("#prompt", "To be")
    # send, then Stop in the same moment: both fetches have started and both are aborted
    page.evaluate("$('text-send').click(); document.querySelector('#text-view .stop-btn').click()")
    page.wait_for_function("document.querySelectorAll('#text-cols .finish').length === 2")
    notes = page.eval_on_selector_all("#text-cols .finish", "ns => ns.map(n => n.dataset.i18n)")
    assert notes == ["finish_aborted", "finish_aborted"] and not page.is_visible("#alert")
    assert not page.is_disabled("#text-send") and page.is_disabled("#text-view .stop-btn")
    # a prompt longer than gpt/tiny's context (32): gpt/tiny refuses it at once, chat/tiny (128) writes on to the end
    set_sampling(page, max_tokens=32)
    page.fill("#prompt", "To be, or not to be, that is the question:")
    page.click("#text-send")
    page.wait_for_selector("#text-out-b .finish")
    assert page.get_attribute("#text-out .finish", "data-i18n") == "finish_error"
    assert page.get_attribute("#text-out-b .finish", "data-i18n") == "finish_length"  # not stopped by the error
    assert page.inner_text("#alert-text").startswith("gpt/tiny: ") and "32" in page.inner_text("#alert-text")
    assert page.locator("#text-out .tok").count() == 0 and page.locator("#text-out-b .tok").count() >= 1
    tab.done("compare-error", allow=("Failed to load resource",))  # the browser logs the 400 itself


def test_compare_a_chat_run_with_itself(tab):
    page = tab.page
    compare(page, "chat/tiny-sft", "chat/tiny-sft")
    assert page.is_visible("#chat-view") and not page.is_visible("#text-view")
    assert "对话视图" in page.inner_text("#gen-view-hint")
    assert page.inner_text("#chat-head-a") == page.inner_text("#chat-head-b") == "chat/tiny-sft"

    def ask(message, turn):
        page.fill("#chat-input", message)
        page.press("#chat-input", "Enter")
        page.wait_for_function(f"document.querySelectorAll('#chat-cols .msg.assistant .finish').length === {2 * turn}")
        return spans(page, "#messages .msg:last-child"), spans(page, "#messages-b .msg:last-child")

    set_sampling(page, max_tokens=16, seed=0)
    a, b = ask("Hello!", 1)
    assert a == b and len(a) >= 1  # the same model, prompt and seed: the same tokens, the same probabilities
    set_sampling(page, max_tokens=16, seed=2)
    a2, b2 = ask("Hi again", 2)  # each column sends its own history: here the same, so still the same answer
    assert a2 == b2 and a2 != a
    for box in ("#messages", "#messages-b"):  # the user's messages are in both columns
        assert page.eval_on_selector_all(f"{box} .msg.user .body", "bs => bs.map(b => b.textContent)") == [
            "Hello!", "Hi again"]
    page.focus("#messages-b .tok >> nth=0")  # keyboard: the tooltip follows focus in the second column too
    assert page.is_visible("#tip")
    tab.done("compare-chat")
    page.click("#chat-reset")
    assert page.locator("#chat-cols .msg").count() == 0


def test_clearing_the_compare_picker_returns_to_one_column(tab):
    page = tab.page
    compare(page, "chat/tiny-sft", "gpt/tiny")  # a chat run and a text run: both use the text view
    assert page.is_visible("#text-view") and page.is_visible("#text-out-b")
    assert "gpt/tiny" in page.inner_text("#gen-view-hint") and page.get_attribute("#gen-max-tokens", "max") == "1024"
    page.select_option("#gen-compare", "")
    assert page.is_visible("#chat-view") and not page.is_visible("#text-view")  # one chat run: its conversation
    assert not page.is_visible("#messages-b") and not page.is_visible("#chat-head-a")
    assert not page.is_visible("#gen-view-hint") and page.get_attribute("#gen-max-tokens", "max") == "128"
    assert "compare" not in page.get_attribute("#chat-cols", "class")
    page.select_option("#gen-model", "gpt/tiny")
    set_sampling(page, max_tokens=8)
    page.fill("#prompt", "To be")
    page.click("#text-send")
    page.wait_for_selector("#text-out .finish")
    assert page.locator("#text-out .tok").count() == 8 and page.locator("#text-out-b *").count() == 0
    page.click("#lang-en")  # the picker and its empty choice in English
    assert page.inner_text("label[for='gen-compare']") == "Compare with (optional)"
    assert page.inner_text("#gen-compare option[value='']") == "(none)"
    assert page.evaluate("JSON.stringify(Object.keys(TEXT.zh).sort()) === JSON.stringify(Object.keys(TEXT.en).sort())")
    tab.done("compare-cleared")


def weights(page) -> list[float]:
    """The attention weight shaded behind each of the prompt's token buttons."""
    return [float(w) for w in page.eval_on_selector_all("#att-tokens .att-tok", "bs => bs.map(b => b.dataset.w)")]


def open_inspect(page, view, text, run="gpt/tiny"):
    """Open a Look-inside view of `run`, then type `text` (the view follows the typing, debounced)."""
    page.click("#tab-inspect")
    page.wait_for_selector(f"#ins-model option[value='{run}']", state="attached")
    page.select_option("#ins-model", run)
    page.click(f"#sub-{view}")
    page.fill("#ins-text", text)


def test_tokenizer_view(tab):
    page = tab.page
    open_inspect(page, "tokens", "To be or")
    page.wait_for_function("document.querySelectorAll('#tok-chips .chip').length === 8")  # char-level: 8 chars
    assert page.inner_text("#tok-chips .chip-text >> nth=2") == "␣"  # the space is made visible
    assert page.locator("#tok-chips .chip-id").first.inner_text().isdigit()
    assert "8" in page.inner_text("#tok-count")
    tab.done("tokenizer")


def test_attention_view_click_a_token(tab):
    page = tab.page
    open_inspect(page, "attention", "To be or")
    page.wait_for_function("document.querySelectorAll('#att-tokens .att-tok').length === 8")
    assert page.locator("#att-grid .cell").count() == 2 * 2  # the tiny GPT: 2 layers x 2 heads
    last = weights(page)  # the last token is chosen first: it may look at every token
    assert sum(last) == pytest.approx(1, abs=1e-2)
    page.click("#att-tokens .att-tok >> nth=2")
    third = weights(page)
    assert third != last and page.get_attribute("#att-tokens .att-tok >> nth=2", "aria-pressed") == "true"
    assert sum(third) == pytest.approx(1, abs=1e-2) and third[3:] == [0] * 5  # causal: it looks back only
    page.keyboard.press("ArrowLeft")  # keyboard: the arrow keys walk along the tokens
    assert page.get_attribute("#att-tokens .att-tok >> nth=1", "aria-pressed") == "true"
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    title = page.inner_text("#att-title")
    page.click("#att-grid .cell >> nth=3")  # enlarge layer 1, head 1
    assert page.inner_text("#att-title") != title and "1" in page.inner_text("#att-title")
    tab.done("attention")
    page.select_option("#ins-model", "bert/tiny")  # BERT: every token looks both ways, between [CLS] and [SEP]
    page.wait_for_function("document.querySelector('#att-tokens .att-tok')?.textContent === '[CLS]'")
    assert "双向" in page.inner_text("#att-caption") and sum(weights(page)) == pytest.approx(1, abs=1e-2)
    assert not tab.errors


def test_kv_cache_view_follows_the_text(tab):
    page = tab.page
    open_inspect(page, "kv", "To be")
    page.wait_for_function("document.querySelector('#kv-numbers')?.innerText.includes('（5 个词元）')")
    assert page.locator("#kv-chart polyline.curve").count() == 1
    assert "2 × 2 × " in page.inner_text("#kv-numbers")  # 2 × n_layer × ...: the tiny GPT has 2 layers
    x_before = float(page.get_attribute("#kv-chart line.marker", "x1"))
    page.fill("#ins-text", "To be or not to be")  # the chart follows the typing (debounced)
    page.wait_for_function("document.querySelector('#kv-numbers').innerText.includes('（18 个词元）')")
    assert float(page.get_attribute("#kv-chart line.marker", "x1")) > x_before
    tab.done("kv-cache")


def test_runs_page_draws_curves(tab):
    page = tab.page
    page.click("#tab-runs")
    page.wait_for_selector("#run-list input[value='gpt/tiny']")
    page.check("#run-list input[value='gpt/tiny']")
    page.wait_for_selector("#curves svg polyline.curve")
    legend = page.inner_text("#curves .legend")
    assert "train_loss" in legend and "val_loss" in legend
    assert page.get_attribute("#report-link a", "href") == "/files/tour/report.html"
    page.check("#run-list input[value='chat/tiny']")
    page.wait_for_function("document.querySelectorAll('#curves figure').length === 2")  # side by side
    page.select_option("#layout", "overlay")
    assert page.locator("#curves figure").count() == 1 and page.locator("#curves polyline.curve").count() == 4
    tab.done("runs")


def test_language_switch_and_keyboard_tabs(tab):
    page = tab.page
    page.click("#lang-en")
    assert page.inner_text("#tab-chat") == "Generate & chat" and page.inner_text("#tab-runs") == "Runs"
    assert page.get_attribute("html", "lang") == "en"
    page.reload(wait_until="load")  # remembered
    assert page.inner_text("#tab-inspect") == "Look inside"
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")  # arrow keys move between the tabs
    assert page.get_attribute("#tab-inspect", "aria-selected") == "true" and page.is_visible("#panel-inspect")
    assert page.evaluate("document.activeElement.id") == "tab-inspect"
    page.wait_for_selector("#tok-chips .chip")
    tab.done("english")
    page.click("#lang-zh")
    assert page.inner_text("#tab-inspect") == "模型内部"
