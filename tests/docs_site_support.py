"""Support for tests/test_docs_site.py: find or build the site, serve it, drive Chromium.

The browser test reads the documentation the way a reader does: every page is loaded in
headless Chromium from a loopback HTTP server, and what the browser saw (console errors,
failed or outside requests, typeset math, copy buttons, links) is collected once per page
into a ``PageReport``. The tests then assert on those reports.

Environment variables:
    LLAMA_BETA_SITE_DIR        use this already built site instead of running ``mkdocs build``
    LLAMA_BETA_REQUIRE_DOCS=1  a missing tool (mkdocs, playwright, chromium) fails instead of skipping (CI)
    LLAMA_BETA_CHROMIUM        the Chromium binary (default: /usr/bin/chromium, else ``chromium`` on PATH)
    LLAMA_BETA_SCREENSHOT_DIR  where screenshots go (default: a pytest temporary directory)
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_DOCS = os.environ.get("LLAMA_BETA_REQUIRE_DOCS") == "1"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Copy buttons: mkdocs-material < 9.7 renders `button.md-clipboard`, newer versions a
# `button.md-code__button[data-md-type=copy]` inside `nav.md-code__nav`.
COPY_BUTTON = "button.md-clipboard, button.md-code__button[data-md-type='copy']"


def skip_or_fail(reason: str):
    """Skip the test - or fail it when LLAMA_BETA_REQUIRE_DOCS=1, so CI cannot go green without docs."""
    if REQUIRE_DOCS:
        pytest.fail(f"{reason} (LLAMA_BETA_REQUIRE_DOCS=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------- the site

def built_site(tmp_dir: Path) -> Path:
    """The site to test: $LLAMA_BETA_SITE_DIR if set, else a fresh strict build into tmp_dir."""
    given = os.environ.get("LLAMA_BETA_SITE_DIR")
    if given:
        site = Path(given).resolve()
        if not (site / "index.html").is_file():
            pytest.fail(f"LLAMA_BETA_SITE_DIR={given}: no index.html there; build it with "
                        f"`mkdocs build --strict --site-dir {given}`", pytrace=False)
        return site
    if importlib.util.find_spec("mkdocs") is None:
        skip_or_fail("mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_dir / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0:
        log = (r.stdout + r.stderr).strip().splitlines()
        useful = [line for line in log if "WARNING" in line or "ERROR" in line or "Error" in line] or log[-30:]
        pytest.fail("`mkdocs build --strict` failed:\n" + "\n".join(useful[-40:]), pytrace=False)
    return site


def site_pages(site: Path) -> list[str]:
    """URL paths of every page: each index.html under the site, as the directory URL mkdocs links to.

    (The sitemap is empty while mkdocs.yml has no site_url, so we walk the files instead.)
    """
    pages = []
    for f in sorted(site.rglob("index.html")):
        rel = f.parent.relative_to(site).as_posix()
        pages.append("/" if rel == "." else f"/{rel}/")
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@contextlib.contextmanager
def serve(site: Path):
    """Serve `site` on 127.0.0.1 at a free port (loopback only); yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="docs-site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------- the browser

def chromium_path() -> str | None:
    """The system Chromium, or None to let Playwright use its own (after `playwright install chromium`)."""
    given = os.environ.get("LLAMA_BETA_CHROMIUM")
    if given:
        if not Path(given).is_file():
            skip_or_fail(f"LLAMA_BETA_CHROMIUM={given} does not exist")
        return given
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@contextlib.contextmanager
def browser():
    """Headless Chromium through Playwright's sync API."""
    if importlib.util.find_spec("playwright") is None:
        skip_or_fail("playwright is not installed (pip install -e '.[docs]')")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        except PlaywrightError as exc:
            skip_or_fail(f"cannot start Chromium ({exe or 'Playwright bundled'}): {str(exc).splitlines()[0]}; "
                         "apt-get install -y chromium, or set LLAMA_BETA_CHROMIUM")
        try:
            yield b
        finally:
            b.close()


def new_context(b, base: str):
    """A browser context, and the list of outside URLs it refused.

    It refuses every request leaving the loopback server and records it.

    A documentation site should work offline; an outside request (web fonts, a CDN) is a finding.
    """
    ctx = b.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort("blockedbyclient")

    ctx.route("**/*", route)
    return ctx, outside


# ---------------------------------------------------------------- one visit per page

@dataclass
class PageReport:
    path: str
    title: str = ""
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    math_spans: int = 0            # .arithmatex elements written by pymdownx.arithmatex
    math_typeset: int = 0          # of those, how many contain an mjx-container after MathJax ran
    math_errors: list[str] = field(default_factory=list)  # TeX that MathJax could not parse
    raw_markup: list[str] = field(default_factory=list)   # $$, \[, ```, --8<-- left in the prose
    code_blocks: int = 0
    code_blocks_without_copy: int = 0
    links: list[str] = field(default_factory=list)         # absolute same-origin hrefs (with fragment)


# Runs in the page once MathJax has finished. Prose text excludes code, math and scripts,
# so what is left is what a reader sees as plain text.
_COLLECT_JS = """(copySel) => {
  const content = document.querySelector('.md-content') || document.body;
  const clone = content.cloneNode(true);
  clone.querySelectorAll('pre, code, mjx-container, .arithmatex, script, style, .highlight')
       .forEach(e => e.remove());
  const blocks = [...content.querySelectorAll('pre > code')].map(c => c.parentElement);
  const spans = [...content.querySelectorAll('.arithmatex')];
  return {
    title: document.title,
    prose: clone.textContent,
    mathSpans: spans.length,
    mathTypeset: spans.filter(s => s.querySelector('mjx-container')).length,
    // TeX errors: CHTML output writes <mjx-merror>, SVG output (tex-svg.js) <g data-mml-node="merror">;
    // an undefined macro is drawn as red text (the noundefined package), its glyphs in <use data-c=hex>.
    mathErrors: [
      ...[...content.querySelectorAll('mjx-merror, [data-mml-node="merror"]')].map(e =>
          (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)),
      ...[...content.querySelectorAll('g[data-mml-node="mtext"][fill="red"]')].map(e =>
          'undefined macro ' + String.fromCodePoint(
              ...[...e.querySelectorAll('use[data-c]')].map(u => parseInt(u.dataset.c, 16)))),
    ],
    codeBlocks: blocks.length,
    codeWithoutCopy: blocks.filter(p => !p.querySelector(copySel)).length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  };
}"""

# Left in prose text, these mean markdown or math that did not render.
RAW_MARKERS = ["$$", "\\[", "\\]", "\\(", "\\)", "```", "--8<--", "!!! ", "{: "]


# True once MathJax has replaced every arithmatex span of the page (or there is none).
TYPESET_DONE_JS = """() => [...document.querySelectorAll('.md-content .arithmatex')]
                            .every(s => s.querySelector('mjx-container'))"""


def visit(ctx, outside: list[str], base: str, path: str, math_timeout_ms: int = 30_000) -> PageReport:
    """Load one page, wait for the network and MathJax to settle, and collect what the reader sees."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    rep = PageReport(path)
    start_outside = len(outside)

    def on_console(msg):
        # a blocked outside request also logs ERR_BLOCKED_BY_CLIENT: it is reported as an outside request
        if msg.type == "error" and "ERR_BLOCKED_BY_CLIENT" not in msg.text:
            where = f"{msg.location.get('url', '')}:{msg.location.get('lineNumber', '')}"
            rep.console_errors.append(f"{msg.text} [{where}]")

    def on_failed(request):
        if request.url.startswith(base):
            rep.failed_requests.append(f"{request.url} ({request.failure})")

    def on_response(response):
        if response.status >= 400 and response.url.startswith(base):
            rep.failed_requests.append(f"{response.url} (HTTP {response.status})")

    page = ctx.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda exc: rep.console_errors.append(f"uncaught: {exc}"))
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    try:
        page.goto(base + path.lstrip("/"), wait_until="load")
        page.wait_for_load_state("networkidle")
        try:
            page.wait_for_function(TYPESET_DONE_JS, timeout=math_timeout_ms)
        except PlaywrightTimeout:  # the report counts the untypeset spans; test_math_is_typeset names them
            pass
        data = page.evaluate(_COLLECT_JS, COPY_BUTTON)
    finally:
        page.close()
    rep.outside_requests = outside[start_outside:]
    rep.title = data["title"]
    rep.math_spans, rep.math_typeset, rep.math_errors = data["mathSpans"], data["mathTypeset"], data["mathErrors"]
    rep.raw_markup = _raw_markup(data["prose"])
    rep.code_blocks, rep.code_blocks_without_copy = data["codeBlocks"], data["codeWithoutCopy"]
    rep.links = [u for u in data["links"] if u.startswith(base)]
    return rep


def _raw_markup(prose: str) -> list[str]:
    found = []
    for marker in RAW_MARKERS:
        i = prose.find(marker)
        if i >= 0:
            found.append(f"{marker!r} in '...{' '.join(prose[max(0, i - 40):i + 40].split())}...'")
    return found


# ---------------------------------------------------------------- links

class _Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k == "id" or (k == "name" and tag == "a"):
                self.ids.add(v or "")


def check_links(site: Path, base: str, links_by_page: dict[str, list[str]]) -> list[str]:
    """Every same-origin link must be an existing file answering HTTP 200, and its #fragment an id there.

    Returns one problem per line: "page -> href: what is wrong".
    """
    problems, status, anchors = [], {}, {}
    for page, links in links_by_page.items():
        for href in sorted(set(links)):
            url, _, frag = href.partition("#")
            if url not in status:
                status[url], anchors[url] = _fetch(site, base, url)
            if status[url] != "ok":
                problems.append(f"{page} -> {href}: {status[url]}")
            elif frag and urllib.parse.unquote(frag) not in anchors[url]:
                problems.append(f"{page} -> {href}: no element with id {urllib.parse.unquote(frag)!r}")
    return problems


def _fetch(site: Path, base: str, url: str) -> tuple[str, set[str]]:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    local = site / path.lstrip("/")
    if path.endswith("/") or local.is_dir():
        # SimpleHTTPRequestHandler would answer a directory listing with 200: demand an index.html
        local = local / "index.html"
    if not local.is_file():
        return f"no file {local.relative_to(site)} in the built site", set()
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            if r.status != 200:
                return f"HTTP {r.status}", set()
            body = r.read()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}", set()
    parser = _Anchors()
    if local.suffix == ".html":
        parser.feed(body.decode("utf-8", "replace"))
    return "ok", parser.ids
