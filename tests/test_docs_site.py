"""The documentation site, read in a real browser.

`mkdocs build --strict` proves the markdown compiles; it cannot tell whether the pages
work when a reader opens them. Here every page of the built site is loaded in headless
Chromium from a loopback server, and we check what the reader would see:

- no console errors, no failed requests, and no requests leaving the machine;
- math typeset by MathJax (every arithmatex span holds an `mjx-container`, none is a TeX
  error) and no raw `$$`, `\\[`, ``` or snippet markers left in the prose;
- a copy button on every code block;
- every same-origin link resolves to a file of the site (HTTP 200) and its #fragment to an id;
- the search box finds the RMSNorm page for "rmsnorm";
- screenshots of a few pages, for a human to look at.

Run it (with a site built on the fly, or an existing one via LLAMA_BETA_SITE_DIR):

    pytest -m docs tests/test_docs_site.py -v

See tests/docs_site_support.py for the environment variables.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

import docs_site_support as support

pytestmark = pytest.mark.docs

# Pages the screenshots cover: the home page, a stage, the file format, the tutorial.
SCREENSHOT_PAGES = {"home": "/", "rmsnorm": "/rmsnorm/", "gguf": "/gguf/", "haiku": "/haiku/"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return support.built_site(tmp_path_factory.mktemp("docs"))


@pytest.fixture(scope="module")
def server(site):
    with support.serve(site) as base:
        yield base


@pytest.fixture(scope="module")
def chromium():
    with support.browser() as b:
        yield b


@pytest.fixture(scope="module")
def reports(site, server, chromium) -> dict[str, support.PageReport]:
    """One visit per page of the site; every check below reads these reports."""
    ctx, outside = support.new_context(chromium, server)
    try:
        return {p: support.visit(ctx, outside, server, p) for p in support.site_pages(site)}
    finally:
        ctx.close()


def _problems(reports, attr) -> list[str]:
    return [f"{path}: {item}" for path, rep in reports.items() for item in getattr(rep, attr)]


def _fail_if(problems: list[str], title: str) -> None:
    """Fail with one finding per line (and no traceback: the list is the diagnosis)."""
    if problems:
        pytest.fail(f"{title}:\n  " + "\n  ".join(problems), pytrace=False)


def test_site_has_the_expected_pages(reports):
    # The nav of mkdocs.yml names these; a page missing here means a page missing for readers.
    for page in ["/", "/rmsnorm/", "/gguf/", "/haiku/", "/api/"]:
        assert page in reports, f"page {page} is not in the built site; pages: {sorted(reports)}"


def test_pages_load_without_errors(reports):
    problems = _problems(reports, "console_errors") + _problems(reports, "failed_requests")
    _fail_if(problems, "console errors or failed requests")


def test_pages_make_no_outside_requests(reports):
    # The site must work offline (MathJax is served from docs/javascripts for that reason).
    # mkdocs-material loads Google Fonts unless mkdocs.yml sets `theme: font: false`.
    urls = sorted({u for rep in reports.values() for u in rep.outside_requests})
    _fail_if(urls, "requests leaving the site (blocked by the test)")


def test_math_is_typeset(reports):
    with_math = {p: r for p, r in reports.items() if r.math_spans}
    # The stage pages carry the math; if none has any, arithmatex itself is broken.
    assert "/rmsnorm/" in with_math, "the RMSNorm page has no arithmatex math spans"
    untypeset = [f"{p}: {r.math_spans - r.math_typeset} of {r.math_spans} math spans not typeset"
                 for p, r in with_math.items() if r.math_typeset != r.math_spans]
    _fail_if(untypeset, "MathJax did not typeset")
    errors = _problems(reports, "math_errors")
    _fail_if(errors, "TeX that MathJax could not parse")


def test_no_raw_markup_in_prose(reports):
    problems = _problems(reports, "raw_markup")
    _fail_if(problems, "unrendered markup in the page text")


def test_code_blocks_have_copy_buttons(reports):
    assert sum(r.code_blocks for r in reports.values()) > 0, "no code blocks on any page"
    missing = [f"{p}: {r.code_blocks_without_copy} of {r.code_blocks} code blocks"
               for p, r in reports.items() if r.code_blocks_without_copy]
    _fail_if(missing, "code blocks without a copy button")


def test_internal_links_resolve(site, server, reports):
    links = {p: r.links for p, r in reports.items()}
    assert sum(map(len, links.values())) > len(links), "too few internal links: link collection is broken"
    problems = support.check_links(site, server, links)
    _fail_if(problems, "broken internal links")


def test_search_finds_rmsnorm(server, chromium):
    """Type into the search box as a reader would; the RMSNorm page must be among the results."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ctx, _ = support.new_context(chromium, server)
    try:
        page = ctx.new_page()
        page.goto(server, wait_until="load")
        box = page.locator("input.md-search__input")  # in the header at desktop width
        box.click()
        # The index loads in a web worker; until then the result header says "Initializing search".
        page.wait_for_function("""() => {
            const meta = document.querySelector('.md-search-result__meta');
            return meta && meta.textContent.trim() && !/initializ/i.test(meta.textContent); }""", timeout=20_000)
        box.press_sequentially("rmsnorm", delay=20)
        hit = page.locator(".md-search-result__item a[href*='rmsnorm/']").first
        with contextlib.suppress(PlaywrightTimeout):
            hit.wait_for(state="visible", timeout=20_000)
        summary = page.locator(".md-search-result__meta").inner_text()
        if not hit.is_visible():
            found = page.eval_on_selector_all(".md-search-result__item a", "as => as.map(a => a.href)")
            pytest.fail(f"search for 'rmsnorm': no hit on the RMSNorm page ({summary!r}; hits: {found})",
                        pytrace=False)
        hit.click()
        page.wait_for_url("**/rmsnorm/**", timeout=10_000)
        heading = page.locator(".md-content h1").first.inner_text()
    finally:
        ctx.close()
    assert "RMSNorm" in heading, f"search hit led to a page titled {heading!r} ({summary})"


def test_screenshots(server, chromium, tmp_path_factory):
    """Full-page screenshots for a human to look at; the test checks they were written and are not blank."""
    out = Path(os.environ.get("LLAMA_BETA_SCREENSHOT_DIR") or tmp_path_factory.mktemp("docs-screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ctx, _ = support.new_context(chromium, server)
    shots = []
    try:
        for name, path in SCREENSHOT_PAGES.items():
            page = ctx.new_page()
            page.goto(server + path.lstrip("/"), wait_until="load")
            page.wait_for_load_state("networkidle")
            with contextlib.suppress(PlaywrightTimeout):  # untypeset math is test_math_is_typeset's finding
                page.wait_for_function(support.TYPESET_DONE_JS, timeout=10_000)
            shots.append(out / f"{name}.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            page.close()
    finally:
        ctx.close()
    print("screenshots:", *shots, sep="\n  ")
    for shot in shots:
        # A blank white 1280-wide page compresses to a few kilobytes; a rendered page is far larger.
        assert shot.stat().st_size > 20_000, f"{shot} looks blank ({shot.stat().st_size} bytes)"
