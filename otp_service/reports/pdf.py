"""A report's page printed to PDF, for archiving: WeasyPrint, A4 landscape, nothing fetched. Apart from the
runner because it is the one part with system libraries of its own (Pango), which may be missing: then
the report is made without its PDF, and says why.
"""

from __future__ import annotations

# The system libraries WeasyPrint needs (Debian names), for the message when they are missing.
PDF_LIBRARIES = "libpango-1.0-0 libpangoft2-1.0-0 (and a font, e.g. fonts-dejavu-core)"


# For paper: A4 landscape (the tables are wide), figures and tables shrunk to the page; every page's footer
# names the report, its period and when it was generated (taken from the header's marked cells, `string-set`),
# and the page number, so a single printed page still says what it is from.
PRINT_CSS = """
@page { size: A4 landscape; margin: 14mm 12mm 18mm 12mm;
        @bottom-left { content: string(title); font: 7pt "DejaVu Sans", sans-serif; color: #555; width: 30%; }
        @bottom-center { content: "Period (UTC): " string(period) " \\2014  generated " string(generated);
                         font: 7pt "DejaVu Sans", sans-serif; color: #555; width: 50%; }
        @bottom-right { content: "page " counter(page) " of " counter(pages); font: 7pt "DejaVu Sans", sans-serif;
                        color: #555; width: 20%; } }
html, body { font-size: 9pt; }
h1 { string-set: title content(); }
.report-period { string-set: period content(); }
.report-generated { string-set: generated content(); }
img { max-width: 100%; height: auto; }
table { font-size: 7.5pt; max-width: 100%; }
td, th { overflow-wrap: break-word; }
tr, img { break-inside: avoid; }
h1, h2, h3, h4 { break-after: avoid; break-inside: avoid; }
/* A heading or an explanation stays with what it introduces. Heading and figure are separate cells (and
   separate blocks inside them), and WeasyPrint honours `break-after: avoid` only between siblings, so each
   level of the path from a heading to the page's body says it: the markdown cell, its wrappers and the
   heading itself. */
.jp-MarkdownCell, .jp-MarkdownCell .jp-Cell-inputWrapper, .jp-MarkdownCell .jp-InputArea,
.jp-RenderedMarkdown, .jp-RenderedMarkdown > :last-child { break-after: avoid; }
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
