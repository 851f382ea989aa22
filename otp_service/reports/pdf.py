"""A report's page printed to PDF, for archiving: WeasyPrint, A4 landscape, nothing fetched. Apart from the
runner because it is the one part with system libraries of its own (Pango), which may be missing: then
the report is made without its PDF, and says why.
"""

from __future__ import annotations

# The system libraries WeasyPrint needs (Debian names), for the message when they are missing.
PDF_LIBRARIES = "libpango-1.0-0 libpangoft2-1.0-0 (and a font, e.g. fonts-dejavu-core)"


# For paper: A4 landscape (the tables are wide), figures and tables shrunk to the page, page numbers.
PRINT_CSS = """
@page { size: A4 landscape; margin: 14mm 12mm 16mm 12mm;
        @bottom-left { content: string(title); font: 7pt "DejaVu Sans", sans-serif; color: #555; }
        @bottom-right { content: "page " counter(page) " of " counter(pages); font: 7pt "DejaVu Sans", sans-serif;
                        color: #555; } }
html, body { font-size: 9pt; }
h1 { string-set: title content(); }
img { max-width: 100%; height: auto; }
table { font-size: 7.5pt; max-width: 100%; }
td, th { overflow-wrap: break-word; }
tr, img { page-break-inside: avoid; }
h1, h2, h3 { page-break-after: avoid; }
/* a heading or an explanation stays with what it introduces (they are separate cells, so `h2` alone is not enough) */
.jp-MarkdownCell, .jp-RenderedMarkdown { break-after: avoid; }
p { orphans: 3; widows: 3; }
.keep-together { break-inside: avoid; }  /* a heading and its (short) table: a longer one breaks anyway */
.jp-OutputArea-output pre { white-space: pre-wrap; }
"""


def render_pdf(html: str) -> tuple[bytes | None, str | None]:
    """The page as a PDF (WeasyPrint), for archiving; or None and why, when WeasyPrint's system libraries
    (Pango) are missing. Nothing is fetched: the page embeds its figures, and only `data:` URLs are read."""
    try:
        from weasyprint import CSS, HTML, URLFetcher
    except OSError as exc:  # the Python package is there, but it could not load Pango
        return None, f"WeasyPrint cannot load its system libraries ({exc}); install {PDF_LIBRARIES}"
    fetcher = URLFetcher(allowed_protocols={"data"})
    return HTML(string=html, url_fetcher=fetcher).write_pdf(stylesheets=[CSS(string=PRINT_CSS)]), None
