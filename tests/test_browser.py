"""The built book as a reader sees it: every page opened in headless Chromium with the network off.

Chromium loads each page of ``_build/html/book`` from disk, runs its scripts (MathJax among them)
and hands back the DOM (``--dump-dom``); the assertions read that DOM. A screenshot of every page is
saved under ``_build/screenshots/``. Build the book first (``.ci/run`` does, at ``smoke`` scale)::

    SYMMETRIES_SCALE=smoke jupyter-book build . -W -n --keep-going
    python -m pytest tests/test_browser.py

Without a built book or a Chromium the tests are skipped, unless ``$SYMMETRIES_BROWSER_TEST`` is
``required`` (CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

bs4 = pytest.importorskip("bs4")

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted((ROOT / "book").glob("*.md"))
# Off-network: every host name fails to resolve and any proxy lookup goes nowhere; file:// still
# loads.
NO_NETWORK = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",
]
# Pipe-table rules ("|---|", "|:--|", "|—|") left in the text mean a table was not rendered.
TABLE_SYNTAX = re.compile(r"\|\s*:?(-{3,}|—+|–+):?\s*\|")
NUMBER = re.compile(r"^[-+−]?(\d|\.\d|nan\b|inf\b)", re.IGNORECASE)


def _chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def _missing() -> str | None:
    if not (HTML / "book").is_dir():
        return (
            f"no built book in {HTML} "
            "(run: SYMMETRIES_SCALE=smoke jupyter-book build . -W -n --keep-going)"
        )
    if _chromium() is None:
        return "no Chromium found (apt-get install chromium, or set $CHROMIUM)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_book_and_browser():
    reason = _missing()
    if reason:
        if os.environ.get("SYMMETRIES_BROWSER_TEST") == "required":
            pytest.fail(f"browser test required but {reason}")
        pytest.skip(reason)


def _browse(page: Path, tmp_path: Path) -> tuple[str, Path]:
    """The DOM of ``page`` after its scripts ran, and the path of its screenshot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{page.stem}.png"
    base = [_chromium(), *FLAGS, *NO_NETWORK]
    # A fresh profile per run: nothing cached (MathJax included) can come from an earlier visit.
    dom = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'dom'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'shot'}",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    return dom, shot


def _table_calls(chapter: Path) -> int:
    """How many tables the chapter's code displays (calls of lib.results.table / markdown_table and
    lib.claims.claims_table, which builds on it)."""
    code = "\n".join(re.findall(r"```\{code-cell\}.*?\n(.*?)```", chapter.read_text(), re.S))
    return len(re.findall(r"(?<![\w.])(?:markdown_|claims_)?table\(", code))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.stem)
def test_page_renders_in_a_browser_without_network(chapter, tmp_path):
    page = HTML / "book" / f"{chapter.stem}.html"
    assert page.exists(), f"{chapter.name} was not built to {page}"
    dom, shot = _browse(page, tmp_path)
    assert shot.stat().st_size > 10_000, f"empty screenshot {shot}"
    soup = bs4.BeautifulSoup(dom, "html.parser")
    article = soup.select_one("article") or soup.body
    assert article is not None and article.get_text(strip=True), (
        f"{page.name}: no content after scripts ran"
    )
    for tag in article.select("script, style"):
        tag.decompose()
    text = article.get_text(" ")

    # Tables: no pipe syntax survives, and every table a cell displays is an HTML table.
    assert not TABLE_SYNTAX.search(text), (
        f"{page.name}: raw table syntax {TABLE_SYNTAX.search(text)[0]!r}"
    )
    outputs = article.select("div.cell_output")
    tables = [t for out in outputs for t in out.select("table")]
    assert len(tables) == _table_calls(chapter), (
        f"{page.name}: {len(tables)} <table> in outputs, the code displays {_table_calls(chapter)}"
    )
    for out in outputs:
        for line in out.get_text("\n").splitlines():
            assert not (
                line.strip().startswith("|") and line.strip().endswith("|") and line.count("|") > 2
            ), f"{page.name}: a table row left as text: {line.strip()[:80]!r}"
    for t in tables:
        rows = [r.find_all("td") for r in t.select("tbody tr")]
        numeric = [
            j
            for j in range(len(rows[0]) if rows else 0)
            if all(NUMBER.match(r[j].get_text(strip=True)) for r in rows if len(r) > j)
        ]
        right = [td for r in rows for td in r if "text-right" in (td.get("class") or [])]
        assert not numeric or right, (
            f"{page.name}: numeric columns {numeric} of a table are not right-aligned"
        )

    # Math: every formula typeset by MathJax (served from the book itself), no TeX delimiters left.
    sources = len(re.findall(r'class="math[ "]', page.read_text()))
    typeset = len(soup.select("mjx-container"))
    assert typeset >= sources, f"{page.name}: {sources} formulas but only {typeset} typeset"
    for code in article.select("pre, code"):
        code.decompose()
    prose = article.get_text(" ")
    assert "\\(" not in prose and "\\[" not in prose, (
        f"{page.name}: raw TeX left: {prose[prose.find(chr(92)) :][:60]!r}"
    )

    # Outputs: no cell failed.
    errors = soup.select("div.cell_output .output.error, div.cell_output .output.traceback")
    assert not errors, f"{page.name}: an output cell holds an error: {errors[0].get_text()[:200]!r}"
    assert "Traceback (most recent call last)" not in " ".join(o.get_text() for o in outputs)

    # Figures: each has a numbered caption, and no plot is shown outside a figure.
    for fig in soup.select("figure"):
        caption = fig.find("figcaption")
        assert caption and caption.get_text(strip=True), f"{page.name}: a figure without caption"
        assert caption.select_one(".caption-number"), (
            f"{page.name}: unnumbered caption {caption.get_text()[:60]!r}"
        )
    loose = [
        img for out in outputs for img in out.select("img") if img.find_parent("figure") is None
    ]
    assert not loose, f"{page.name}: {len(loose)} image output(s) without a figure caption"
