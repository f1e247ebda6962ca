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
