"""nyx_explorer.report_md: report.md to HTML with raw HTML off, plot links to the plot route."""

from __future__ import annotations

import html
import re
import sys

from tests.conftest import REPO

if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

from nyx_explorer.report_md import render_report  # noqa: E402

PLOTS = {"a-b-accuracy_vs_dim.png", "a-b-mrr_vs_dim.png"}


def plot_url(name: str) -> str | None:
    return f"/nyx/p/demo/report/{name}" if name in PLOTS else None


def test_markup_in_the_text_is_escaped_not_run():
    text = ('# Report <script>alert(1)</script>\n\n- note <img src=x onerror=alert(2)>\n\n'
            '| metric | <b>model</b> |\n|---|---|\n| f1 | <i>x</i> \\| y |\n\n'
            '[click](javascript:alert(3)) *fine*\n')
    out, linked = render_report(text, plot_url)
    assert linked == []
    for raw in ("<script", "<img", "<b>", "<i>", 'href="javascript:'):
        assert raw not in out, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "onerror=alert(2)" in html.unescape(out)
    cells = re.findall(r"<t[hd]>(.*?)</t[hd]>", out)
    assert [html.unescape(c) for c in cells] == ["metric", "<b>model</b>", "f1", "<i>x</i> | y"]
    assert "<em>fine</em>" in out


def test_plot_links_go_to_the_plot_route_in_one_grid():
    text = ("## a / b\n\n![a / b: f1 vs dim](a-b-accuracy_vs_dim.png)\n\n"
            "![a / b: mrr vs dim](./a-b-mrr_vs_dim.png)\n\n![elsewhere](https://example.org/x.png)\n")
    out, linked = render_report(text, plot_url)
    assert linked == ["a-b-accuracy_vs_dim.png", "a-b-mrr_vs_dim.png"]
    (grid,) = re.findall(r'<p class="plots">(.*?)</p>', out, re.S)  # consecutive plots: one grid
    srcs = re.findall(r'<img class="plot" src="([^"]+)" alt="([^"]*)"', grid)
    assert srcs == [("/nyx/p/demo/report/a-b-accuracy_vs_dim.png", "a / b: f1 vs dim"),
                    ("/nyx/p/demo/report/a-b-mrr_vs_dim.png", "a / b: mrr vs dim")]
    # an image that is not one of the report's plots is never fetched: its alt text stands in
    assert "example.org" not in re.sub(r'title="[^"]*"', "", out) and "[image: elsewhere]" in out
    assert out.count("<img") == 2
