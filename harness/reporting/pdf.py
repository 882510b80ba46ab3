"""The HTML → PDF engine of every report: Jinja2 templates (`templates/`), figures as inline SVG, WeasyPrint.

The same context gives the same PDF bytes: the document date comes from the results (`generated`), and
fontTools' time stamps from SOURCE_DATE_EPOCH set to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from harness import __version__
from harness.files import write_atomic
from harness.reporting import figures as figs

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _css_string(value: Any) -> Markup:
    """A CSS string literal that is also safe inside <style>."""
    text = str(value)
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "<" or ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):x} ")
        else:
            out.append(ch)
    return Markup('"' + "".join(out) + '"')


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["css_string"] = _css_string
    return env


@functools.lru_cache(maxsize=1)
def _css() -> Markup:
    return Markup((TEMPLATES / "report.css").read_text(encoding="utf-8"))


def created(generated: str | None) -> str:
    """The document date: `generated` (a date or ISO timestamp, results.json's), else today."""
    value = str(generated or "").strip()
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return dt.date.today().isoformat()


def _epoch(created: str) -> int:
    d = dt.datetime.fromisoformat(created if "T" in created else created + "T00:00:00")
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp())


@contextlib.contextmanager
def _source_date(created: str) -> Iterator[None]:
    """fontTools stamps the embedded font subsets with the time; SOURCE_DATE_EPOCH fixes it, so the same
    results give the same bytes. A value already set by the caller wins."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        yield
        return
    os.environ["SOURCE_DATE_EPOCH"] = str(max(0, _epoch(created)))
    try:
        yield
    finally:
        os.environ.pop("SOURCE_DATE_EPOCH", None)


def render_html(template: str, context: dict[str, Any]) -> str:
    return _env().get_template(template).render(**context)


class _QuietFontSubsetting(logging.Filter):
    """WeasyPrint warns on every font of every PDF where the optional HarfBuzz-Subset library is missing and
    it subsets with fontTools instead; the PDFs are the same, so the warning is noise in a batch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HarfBuzz-Subset" not in record.getMessage()


@functools.lru_cache(maxsize=1)
def _weasyprint():
    """WeasyPrint, imported on first use (it takes most of a second)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HarfBuzz-Subset.*", category=DeprecationWarning)
        import weasyprint
    logging.getLogger("weasyprint").addFilter(_QuietFontSubsetting())
    return weasyprint


def write_pdf(html: str, out_pdf: Path | str, created: str) -> Path:
    weasyprint = _weasyprint()
    with _source_date(created):
        data = weasyprint.HTML(string=html, base_url=str(TEMPLATES)).write_pdf()
    return write_atomic(Path(out_pdf), data)


def figure(svg: str, alt: str) -> Markup:
    return Markup('<img class="figure" src="{}" alt="{}">').format(figs.data_uri(svg), alt)


def page(*, kind: str, title: str, header_left: str | None, header_right: str, footer: str, description: str,
         harness_version: str | None, generated: str | None) -> dict:
    """What base.html puts on every page: running header and footer, the document's metadata."""
    return {
        "kind": kind,
        "title": title,
        "author": f"harness {harness_version or __version__}",
        "description": description,
        "version": __version__,
        "created": created(generated),
        "css": _css(),
        "header_left": header_left or "harness",
        "header_right": header_right,
        "footer": footer,
    }
