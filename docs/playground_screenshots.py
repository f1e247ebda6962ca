"""Screenshots of the playground for the READMEs, taken in headless Chromium against the runs of `make tour`.

    .venv/bin/python docs/playground_screenshots.py                 # runs/ -> docs/figures/playground_*.png
    .venv/bin/python docs/playground_screenshots.py --runs=/tmp/runs --out=/tmp/shots

Needs the dev extra (playwright) and the system's chromium, like the browser tests. Each picture is one thing a
learner does: talk to the chat model and hover a token, ask the SFT model and an aligned one the same thing, click
a token in the attention explorer, watch the KV cache grow, put training curves side by side. A run the folder lacks is skipped with a line saying which.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from llmpath.serve.app import background_server
from llmpath.serve.models import ModelStore

VIEW = {"width": 1280, "height": 800}


def first(store: ModelStore, *ids: str) -> str | None:
    known = {r.id for r in store.runs()}
    return next((i for i in ids if i in known), None)


def chat(page, out: Path, run: str) -> None:
    page.select_option("#gen-model", run)
    page.fill("#gen-max-tokens", "48")
    page.fill("#gen-temperature", "0.7")
    page.fill("#gen-seed", "0")
    page.fill("#chat-input", "写一条好评")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant .finish", timeout=60_000)
    tokens = page.locator(".msg.assistant .tok")
    tokens.nth(min(2, tokens.count() - 1)).hover()  # the tooltip: this token's probability and the alternatives
    page.screenshot(path=str(out / "playground_chat.png"))


def compare(page, out: Path, runs: tuple[str, str]) -> None:
    page.click("#tab-chat")
    page.select_option("#gen-model", runs[0])
    page.select_option("#gen-compare", runs[1])
    page.fill("#gen-max-tokens", "48")
    page.fill("#gen-temperature", "0.8")
    page.fill("#gen-seed", "0")
    page.fill("#chat-input", "写一条差评")
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelectorAll('.finish').length >= 2", timeout=60_000)
    page.screenshot(path=str(out / "playground_compare.png"))
    page.select_option("#gen-compare", "")
    page.click("#chat-reset")


def inspect(page, out: Path, run: str, text: str) -> None:
    page.click("#tab-inspect")
    page.wait_for_selector(f"#ins-model option[value='{run}']", state="attached")
    page.select_option("#ins-model", run)
    page.click("#sub-attention")
    page.fill("#ins-text", text)
    page.wait_for_selector("#att-tokens .att-tok")
    page.wait_for_timeout(500)  # the debounced request for the final text
    page.click("#att-tokens .att-tok >> nth=-2")
    page.screenshot(path=str(out / "playground_attention.png"))
    page.click("#sub-kv")
    page.wait_for_selector("#kv-chart polyline.curve")
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "playground_kv.png"))


def curves(page, out: Path, runs: list[str]) -> None:
    page.click("#tab-runs")
    for run in runs:
        page.check(f"#run-list input[value='{run}']")
    page.select_option("#layout", "overlay")
    page.wait_for_selector("#curves svg")
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "playground_runs.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ModelStore(args.runs)
    chat_run = first(store, "chat/small-sft", "chat/tiny-sft")
    att_run = first(store, "chat/small-sft", "gpt/small", "chat/tiny-sft", "gpt/tiny")
    pair = (first(store, "chat/small-sft"), first(store, "chat/small-dpo", "chat/small-ppo", "chat/small-grpo"))
    curve_runs = [r for r in ("gpt/small", "llama/small-llama", "llama/small-moe") if first(store, r)]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with background_server(args.runs) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(viewport=VIEW).new_page()
        page.set_default_timeout(30_000)
        page.goto(url + "/", wait_until="load")
        page.wait_for_selector("#gen-model option", state="attached")
        for name, run, shoot in (("chat", chat_run, lambda: chat(page, out, chat_run)),
                                 ("compare", all(pair) and pair, lambda: compare(page, out, pair)),
                                 ("attention and KV cache", att_run,
                                  lambda: inspect(page, out, att_run, "今天天气很好，我们去公园散步。")),
                                 ("training curves", curve_runs, lambda: curves(page, out, curve_runs))):
            if run:
                shoot()
                print(f"{name}: {run}")
            else:
                print(f"{name}: skipped (no such run in {args.runs}; `make tour` trains it)")
        browser.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
