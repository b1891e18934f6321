"""The evaluation report (report.md) as HTML, for the evaluation page.

markdown-it-py with CommonMark plus GFM tables and strikethrough. Raw HTML is off: the report
holds text from data (dataset, split and model names, notes), so a `<script>` in it comes out as
text. Link targets go through markdown-it's own check (no `javascript:` and the like). Image links
that name one of the report's plots point at the explorer's plot route instead; any other image is
shown as its alt text, so a report cannot make the page fetch from elsewhere. Paragraphs that hold
only plots are merged and classed `plots`, so the page lays the figures out in a grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "xhtmlOut": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _render_image)
    return md


def _render_image(self, tokens: Sequence[Token], idx: int, options, env) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    url = token.attrs.get("data-plot-url")
    if url is None:
        src = str(token.attrGet("src") or "")
        return f'<span class="not-a-plot" title="{escapeHtml(src)}">[image: {escapeHtml(alt)}]</span>'
    url = escapeHtml(str(url))
    return (f'<a class="plot" href="{url}" target="_blank"><img class="plot" src="{url}" alt="{escapeHtml(alt)}" '
            f'title="{escapeHtml(alt)}" loading="lazy"></a>')


def _plot_name(src: str) -> str:
    return src.removeprefix("./")


def _only_plots(inline: Token) -> bool:
    children = inline.children or []
    images = [c for c in children if c.type == "image"]
    rest = [c for c in children if c.type != "image"]
    return bool(images) and all(c.attrs.get("data-plot-url") for c in images) and all(
        c.type == "softbreak" or (c.type == "text" and not c.content.strip()) for c in rest)


def render_report(text: str, plot_url: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """(HTML of the Markdown `text`, the plots it links, in order). `plot_url(name)` is the URL
    of the report's plot `name`, or None when the report has no such plot."""
    md = _parser()
    tokens = md.parse(text)
    linked: list[str] = []
    for inline in (t for t in tokens if t.type == "inline"):
        for child in inline.children or []:
            if child.type == "image":
                name = _plot_name(str(child.attrGet("src") or ""))
                url = plot_url(name)
                if url is not None:
                    child.attrs["data-plot-url"] = url
                    if name not in linked:
                        linked.append(name)
    # merge runs of paragraphs that hold only plots into one paragraph: the page's plot grid
    merged: list[Token] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if (t.type == "paragraph_open" and i + 2 < len(tokens) and tokens[i + 1].type == "inline"
                and _only_plots(tokens[i + 1])):
            inline = tokens[i + 1]
            prev_close = merged[-1] if merged else None
            if prev_close is not None and prev_close.type == "paragraph_close" and prev_close.meta.get("plots"):
                merged[-2].children = [*(merged[-2].children or []), Token("softbreak", "br", 0),
                                       *(inline.children or [])]
            else:
                t.attrSet("class", "plots")
                tokens[i + 2].meta["plots"] = True
                merged += [t, inline, tokens[i + 2]]
            i += 3
            continue
        merged.append(t)
        i += 1
    return md.renderer.render(merged, md.options, {}), linked
