"""Offline math in the built book: page weight and time to typeset, MathJax against KaTeX.

Opens one built page (by default the similarity chapter, the book's most formula-heavy page) in
headless Chromium with the network off and a fresh profile, once per run, through the DevTools
protocol, and reports

- the time from navigation start until every formula is typeset (no ``\\(`` or ``\\[`` left in any
  ``.math`` element), median over cold runs;
- the page weight: the bytes of every file the page loaded (HTML, scripts, styles, fonts), read from
  disk, and the share of them that the math renderer accounts for.

The book ships MathJax 3 from ``sphinx-mathjax-offline``. For KaTeX the script writes a copy of the
page beside it with the MathJax tags replaced by KaTeX and its auto-render extension (what
``sphinxcontrib-katex`` emits), taking KaTeX from an unpacked npm ``katex`` package::

    npm pack katex@0.16.22 && tar xzf katex-0.16.22.tgz        # gives package/dist
    .venv/bin/python benchmarks/math_offline.py --katex-dist package/dist --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    "--proxy-server=127.0.0.1:9",
]
# Resolves window.__typeset with milliseconds since navigation start once no TeX delimiter is left.
PROBE = r"""
(() => {
  const done = () => {
    const math = document.querySelectorAll('.math');
    if (!math.length) return false;
    for (const e of math) {
      const t = e.textContent;
      if (t.includes('\\(') || t.includes('\\[')) return false;
    }
    return true;
  };
  window.__typeset = new Promise(resolve => {
    const check = () => { if (done()) { resolve(performance.now()); return true; } return false; };
    const start = () => {
      if (check()) return;
      const obs = new MutationObserver(() => { if (check()) obs.disconnect(); });
      obs.observe(document.documentElement, {subtree: true, childList: true, characterData: true});
    };
    document.addEventListener('DOMContentLoaded', start);
  });
})();
"""
KATEX_TAGS = """<link rel="stylesheet" href="{s}/katex/katex.min.css">
<script defer src="{s}/katex/katex.min.js"></script>
<script defer src="{s}/katex/contrib/auto-render.min.js"></script>
<script>document.addEventListener("DOMContentLoaded", () => renderMathInElement(document.body, {{
  delimiters: [{{left: "\\\\[", right: "\\\\]", display: true}},
               {{left: "\\\\(", right: "\\\\)", display: false}}],
  throwOnError: false}}));</script>
"""


def katex_page(page: Path, dist: Path) -> Path:
    """A copy of ``page`` that typesets with KaTeX (from ``<book>/_static/katex``), not MathJax."""
    static = page.parent.parent / "_static"
    shutil.copytree(dist, static / "katex", dirs_exist_ok=True)
    html = page.read_text()
    html, n = re.subn(
        r"<script[^>]*>\s*window\.MathJax[^<]*</script>\s*|<script[^>]*mathjax[^>]*></script>\s*",
        "",
        html,
        flags=re.I,
    )
    assert n >= 1, "no MathJax script tag found in the page"
    html = html.replace("</head>", KATEX_TAGS.format(s="../_static") + "</head>", 1)
    out = page.with_name(page.stem + ".katex.html")
    out.write_text(html)
    return out


async def _measure(ws_url: str, url: str) -> dict:
    ws = await websocket_connect(ws_url, max_message_size=1 << 28)
    ids = iter(range(1, 1 << 30))
    # Every URL the page requested (the Resource Timing API does not list file:// loads).
    loaded = []

    async def call(method, **params):
        i = next(ids)
        await ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await ws.read_message())
            if msg.get("method") == "Network.requestWillBeSent":
                loaded.append(msg["params"]["request"]["url"])
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    await call("Page.enable")
    await call("Network.enable")
    await call("Page.addScriptToEvaluateOnNewDocument", source=PROBE)
    await call("Page.navigate", url=url)
    expr = """(async () => { const t = await window.__typeset;
      return {typeset: t, formulas: document.querySelectorAll('.math').length}; })()"""
    for _ in range(200):  # the probe exists only once the new document has started
        try:
            r = await call(
                "Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True
            )
            if "exceptionDetails" not in r:
                ws.close()
                return dict(r["result"]["value"], resources=sorted(set(loaded)))
        except RuntimeError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url}: math never finished typesetting")


def measure(chromium: str, page: Path) -> dict:
    """One cold visit of ``page`` in a fresh browser: typeset and DOMContentLoaded times, loaded
    files."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    targets = json.load(
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1)
                    )
                    ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                    break
                except (OSError, StopIteration):
                    time.sleep(0.1)
            else:
                raise RuntimeError("Chromium did not open its DevTools port")
            return asyncio.run(_measure(ws_url, page.as_uri()))
        finally:
            proc.terminate()
            proc.wait(10)


def weight(page: Path, resources: list[str], pattern: str) -> tuple[int, int]:
    """Bytes of the page and every local file it loaded, and of those whose URL has ``pattern``."""
    files = {page} | {Path(unquote(urlparse(u).path)) for u in resources if u.startswith("file:")}
    sizes = {f: f.stat().st_size for f in files if f.is_file()}
    return sum(sizes.values()), sum(
        v for f, v in sizes.items() if f != page and re.search(pattern, str(f), re.I)
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", type=Path, default=ROOT / "_build/html/book/07_similarity.html")
    ap.add_argument("--katex-dist", type=Path, help="an unpacked npm katex package's dist folder")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args(argv)
    variants = {"MathJax 3 (sphinx-mathjax-offline)": (args.page, "mathjax")}
    if args.katex_dist:
        variants["KaTeX (npm katex)"] = (katex_page(args.page, args.katex_dist), "katex")
    page = args.page.relative_to(ROOT) if args.page.is_relative_to(ROOT) else args.page
    print(f"{page}, {args.runs} cold runs each")
    for name, (page, pattern) in variants.items():
        runs = [measure(args.chromium, page) for _ in range(args.runs)]
        total, math = weight(page, runs[0]["resources"], pattern)
        typeset = [r["typeset"] for r in runs]
        print(
            f"{name}: {runs[0]['formulas']} formulas; "
            f"typeset at {statistics.median(typeset):.0f} ms "
            f"(min {min(typeset):.0f}, max {max(typeset):.0f}) after navigation start; "
            f"page weight {total / 1024:.0f} KiB of which math "
            f"{math / 1024:.0f} KiB ({len(runs[0]['resources'])} files loaded)"
        )


if __name__ == "__main__":
    main()
