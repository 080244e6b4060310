"""HTML handouts of executed notebooks that read offline (no CDN script, stylesheet or image)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..safefs import atomic_write, free_path
from .languages import notebook_language

# Handouts must read on workshop Wi-Fi: the lab template's require.js, MathJax, mermaid and widget
# loaders all come from CDNs. This template drops them; text, code, tables and embedded plots need no
# script. A widget shows its text fallback (its live view needs the widget JavaScript).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block data_widget_view scoped -%}
<div class="jp-OutputArea-output jp-RenderedText"><pre>{{ output.data.get('text/plain', '') | escape }}</pre></div>
{%- endblock data_widget_view -%}
"""
_EXTERNAL = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)


def external_references(html: str) -> list[str]:
    """Tags that would fetch from the network (script, link, img, iframe with an http(s) or // URL)."""
    return [m.group(0) for m in _EXTERNAL.finditer(html)]


def html_exporter(offline: bool = True, lang: str = "en") -> Any:
    """nbconvert's HTMLExporter with plots embedded; offline: no CDN script or stylesheet."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    if not offline:
        return HTMLExporter(embed_images=True, language_code=lang)
    return HTMLExporter(embed_images=True, extra_loaders=[DictLoader({"phi3kit-offline.html.j2": OFFLINE_TEMPLATE})],
                        template_file="phi3kit-offline.html.j2", language_code=lang)


# A translated markdown cell is wrapped in <div dir="rtl" lang="fa">, a blank line, its markdown, </div>.
# With embed_images, nbconvert re-parses each HTML block on its own, which closes that opening tag on the
# spot and leaves the prose outside it, left to right. The handout moves the wrapper's direction onto the
# cell's rendered markdown instead (JupyterLab, parsing the cell whole, nests it as written).
_EMPTIED_WRAPPER = re.compile(
    r'(<div class="[^"]*\bjp-RenderedMarkdown\b[^"]*"[^>]*)>\s*<div dir="(rtl|ltr)" lang="([\w-]+)">\s*</div>')


def hoist_direction(body: str) -> str:
    """The handout's HTML with each emptied direction wrapper's `dir` and `lang` on its cell's markdown."""
    return _EMPTIED_WRAPPER.sub(r'\1 dir="\2" lang="\3">', body)


def to_html(notebook: str | Path, overwrite: bool = False, offline: bool = True) -> Path:
    """A handout: the executed notebook as one self-contained HTML file that reads without a network.

    The page's `lang` is the notebook's language; right-to-left prose carries its own `dir="rtl"`
    (the translated notebooks wrap it), so code and outputs stay left to right.
    """
    notebook = Path(notebook)
    return atomic_write(free_path(notebook.with_suffix(".html"), overwrite), render_html(notebook, offline))


def render_html(notebook: str | Path, offline: bool = True) -> str:
    """The handout's HTML for `notebook` (see `to_html`), not yet written anywhere."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = html_exporter(offline, notebook_language(nb)).from_notebook_node(nb)
    body = hoist_direction(body)
    if offline and (refs := external_references(body)):
        raise RuntimeError(f"the offline handout still references the network: {refs[:3]}")
    return body
