"""The tour: stage selection, a failing stage does not stop the others, the report, a real browser."""

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from llmpath import tour
from llmpath.config import ConfigError
from llmpath.plotting import bar_table, save_fig
from llmpath.topics import Topic

ROOT = Path(__file__).resolve().parent.parent


def fake_ok(preset, out, fresh):
    fig = save_fig(bar_table(["a", "b"], [1.0, 2.0], title="中文标题"), Path(out) / "fake" / "figures" / "bars.png")
    return tour.StageResult("acc", 0.9, ">= 0.8", True, "| m | acc |\n|---|---|\n| x | 0.9 |", [fig])


def fake_broken(preset, out, fresh):
    raise RuntimeError("boom")


FAKE_STAGES = [
    Topic("ok", "fake.ok", "fake", stage="1", stage_title="好的阶段", teaches="教学段落"),
    Topic("broken", "fake.broken", "fake", stage="2", stage_title="坏的阶段", teaches="x"),
    Topic("ok2", "fake.ok2", "fake", stage="3", stage_title="又一个", teaches="y"),
]


@pytest.fixture
def fake_stages(monkeypatch):
    monkeypatch.setattr(tour, "STAGES", FAKE_STAGES)
    monkeypatch.setattr(tour, "stage_function", lambda s: fake_broken if s.name == "broken" else fake_ok)


def test_the_tour_the_cli_and_the_doctor_read_one_registry():
    from llmpath.cli import TOPICS as cli_topics
    from llmpath.doctor import all_checks
    from llmpath.topics import TOPIC_LIST

    assert list(cli_topics) == [t.name for t in TOPIC_LIST]
    assert [s.name for s in tour.STAGES] == [t.name for t in TOPIC_LIST if t.stage]
    assert [c[0] for c in all_checks() if c[0].startswith("topic ")] == [f"topic {t.name}" for t in TOPIC_LIST]
    for t in tour.STAGES:  # every stage's tour() exists and every document it names is in the repository
        assert callable(tour.stage_function(t))
        assert (ROOT / t.tutorial).exists() and (ROOT / t.notebook).exists()


def test_select_stages(fake_stages):
    assert [s.stage for s in tour._select("")] == ["1", "2", "3"]
    assert [s.stage for s in tour._select("0")] == ["1", "2", "3"]
    assert [s.stage for s in tour._select("3,ok")] == ["1", "3"]
    with pytest.raises(ConfigError, match="unknown stage '9' in --only; choose from: 0=all, 1=ok"):
        tour._select("9")


def test_failing_stage_does_not_stop_the_tour(fake_stages, tmp_path, capsys):
    assert tour.main(["--yes", f"--out={tmp_path}"]) == 1
    out = capsys.readouterr().out
    assert "| 2 | broken | error |" in out and out.count("PASS") >= 2
    report = (tmp_path / "tour" / "report.html").read_text()
    assert "boom" in report and report.count("data:image/png;base64,") == 2
    md = (tmp_path / "tour" / "report.md").read_text()
    assert "](../fake/figures/bars.png)" in md


def test_only_one_stage_keeps_the_others_in_the_report(fake_stages, tmp_path, capsys):
    tour.main(["--yes", f"--out={tmp_path}"])
    assert tour.main(["--yes", "--only=3", f"--out={tmp_path}"]) == 0  # the broken stage 2 was not re-run
    assert "from an earlier tour" in capsys.readouterr().out
    md = (tmp_path / "tour" / "report.md").read_text()
    assert md.index("## 1.") < md.index("## 2.") < md.index("## 3.") and "(earlier run)" in md
    tour.main(["--yes", "--only=3", "--preset=tiny", f"--out={tmp_path}"])  # another preset: no mixing
    assert "## 1." not in (tmp_path / "tour" / "report.md").read_text()


def test_report_embeds_a_cjk_font_subset_of_its_characters():
    face = tour.cjk_font_face("报告 report 学习")
    assert face.startswith("@font-face{font-family:'llmpath CJK';src:url(data:font/otf;base64,")
    assert 1_000 < len(face) < 100_000  # 4 glyphs, not the 16 MB font
    assert tour.cjk_font_face("only latin") == ""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_check(report: Path, screenshot: Path) -> dict:
    """Serve the report's folder on localhost, load it in headless Chromium, return what we saw."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(report.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.server_port}/{report.name}", wait_until="load")
            seen = {
                "images": page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"),
                "summary_rows": page.locator("#summary tr").count(),
                "title": page.title(),
                # the embedded CJK subset (tour.cjk_font_face) loaded: Chinese is drawn without a system font
                "cjk_font": page.evaluate("document.fonts.ready.then(() => Array.from(document.fonts).some("
                                          "f => f.family.includes('llmpath CJK') && f.status === 'loaded'))"),
            }
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        server.shutdown()
    seen["errors"] = errors
    return seen


@pytest.mark.slow
def test_report_in_a_real_browser(fake_stages, tmp_path):
    if not _chromium():
        pytest.skip("chromium is not installed (make test installs it where apt-get works)")
    tour.main(["--yes", f"--out={tmp_path}"])
    seen = browser_check(tmp_path / "tour" / "report.html", tmp_path / "tour" / "screenshot.png")
    assert seen["images"] == [True, True] and seen["summary_rows"] == 4 and not seen["errors"]
    assert seen["cjk_font"]
    assert (tmp_path / "tour" / "screenshot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_tiny_tour_of_every_stage_in_a_browser(tmp_path):
    """Every real stage on its tiny preset, then the report in Chromium; the screenshot stays in the run folder."""
    if not _chromium():
        pytest.skip("chromium is not installed (make test installs it where apt-get works)")
    tour.main(["--yes", "--preset=tiny", f"--out={tmp_path}"])
    summary = (tmp_path / "tour" / "summary.json").read_text()
    assert '"metric": "error"' not in summary, summary
    seen = browser_check(tmp_path / "tour" / "report.html", tmp_path / "tour" / "screenshot.png")
    assert seen["images"] and all(seen["images"]) and not seen["errors"]
    assert seen["summary_rows"] == len(tour.STAGES) + 1
