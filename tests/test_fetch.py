"""Image fetching against a real loopback HTTP server."""

import pytest

from nyx_tasks.core.config import FetchConfig
from nyx_tasks.sources.fetch import AddressGuard, ImageFetcher
from tests.conftest import png_bytes

LOOPBACK = ["127.0.0.0/8"]


def fetch(urls, **kw):
    cfg = FetchConfig(**{"allowed_networks": LOOPBACK, "timeout_s": 1.0, "retries": 1,
                         "backoff_s": 0.01, **kw})
    return ImageFetcher(cfg).fetch_all(urls)


def test_good_images_are_decoded_and_content_addressed(image_server):
    import hashlib

    body = png_bytes(40, 30)
    png = image_server.add("/a.png", "ok", body, "image/png")
    jpg = image_server.add("/b.jpg", "ok", png_bytes(20, 10, fmt="JPEG"), "image/jpeg")
    res = fetch([png, jpg])
    assert res[png].ok and res[png].ext == "png" and (res[png].width, res[png].height) == (40, 30)
    assert res[png].image_id == hashlib.sha256(body).hexdigest()
    assert res[jpg].ok and res[jpg].ext == "jpg"


def test_fetch_all_works_where_an_event_loop_already_runs(image_server):
    """A notebook cell or a Playwright script calls it with a loop running in its thread: the same
    results, no "asyncio.run() cannot be called from a running event loop"."""
    import asyncio

    url = image_server.add("/c.png", "ok", png_bytes(24, 20), "image/png")

    async def inside_a_loop():
        return fetch([url])

    res = asyncio.run(inside_a_loop())
    assert res[url].ok and (res[url].width, res[url].height) == (24, 20)


@pytest.mark.parametrize("route,reason", [
    (("missing",), "http_404"),
    (("ok", b"<html>not an image</html>", "text/html"), "not_image_content_type"),
    (("ok", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "image/png"), "decode_error"),
    (("ok", b"x" * 5000, "image/png"), "too_large"),
])
def test_bad_responses_get_named_reasons(image_server, route, reason):
    url = image_server.url("/missing") if route[0] == "missing" else image_server.add("/x", *route)
    (res,) = fetch([url], max_bytes=4000).values()
    assert not res.ok and res.reason == reason


def test_slow_response_times_out_after_retries(image_server):
    url = image_server.add("/slow", "sleep", 2.0, png_bytes())
    (res,) = fetch([url], timeout_s=0.3, retries=1).values()
    assert res.reason == "timeout"
    assert image_server.requests.count("/slow") == 2  # first try + one retry


def test_5xx_is_retried_with_backoff_then_succeeds(image_server):
    url = image_server.add("/flaky", "flaky", {"left": 2, "body": png_bytes()})
    (res,) = fetch([url], retries=2).values()
    assert res.ok
    assert image_server.requests.count("/flaky") == 3


def test_decompression_bomb_is_refused_before_decoding(image_server):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("1", (3000, 3000)).save(buf, format="PNG")
    url = image_server.add("/bomb.png", "ok", buf.getvalue(), "image/png")
    (res,) = fetch([url], max_pixels=1_000_000).values()
    assert res.reason == "decompression_bomb"


def test_loopback_is_refused_without_allowlist_and_server_sees_nothing(image_server):
    url = image_server.add("/a.png", "ok", png_bytes(), "image/png")
    host_url = url.replace("127.0.0.1", "localhost")
    res = fetch([url, host_url], allowed_networks=[])
    assert {r.reason for r in res.values()} == {"blocked_address"}
    assert image_server.requests == []


def test_redirect_to_refused_address_is_blocked(image_server):
    """Allow only 127.0.0.1/32: a redirect from there to another loopback address
    (127.0.0.2, outside the allowlist) must be refused at connect time."""
    target = f"http://127.0.0.2:{image_server.port}/a.png"
    image_server.add("/a.png", "ok", png_bytes(), "image/png")
    url = image_server.add("/r", "redirect", target)
    (res,) = fetch([url], allowed_networks=["127.0.0.1/32"]).values()
    assert res.reason == "blocked_address"
    assert image_server.requests == ["/r"]


def test_address_guard_classification_of_loopback_literals():
    # Address literals only: nothing is contacted here.
    g = AddressGuard([])
    assert not g.allows("127.0.0.1") and not g.allows("::1")
    assert not g.allows("::ffff:127.0.0.1")  # IPv4-mapped loopback
    assert AddressGuard(["127.0.0.0/8"]).allows("127.0.0.5")


def test_trickling_body_is_cut_at_the_deadline_on_every_attempt(image_server):
    """Headers at once, then one byte per 0.5 s: the per-read timeout (2 s) never fires, so only
    the total deadline ends each attempt (60 bytes would otherwise take 30 s per attempt)."""
    import time

    url = image_server.add("/trickle.png", "trickle", b"x" * 60, 0.5)
    t0 = time.monotonic()
    (res,) = fetch([url], timeout_s=2.0, deadline_s=1.5, retries=1, backoff_s=0.01).values()
    elapsed = time.monotonic() - t0
    assert not res.ok and res.reason == "deadline" and "deadline_s=1.5" in res.detail
    assert image_server.requests.count("/trickle.png") == 2  # first try + one retry, each cut
    assert 2 * 1.5 <= elapsed < 3 * (2 * 1.5), elapsed  # deadline x attempts; generous upper bound


def test_file_urls_only_under_file_roots_on_the_real_path(tmp_path, monkeypatch):
    import os

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    good = root / "sub" / "g.png"
    good.write_bytes(png_bytes())
    (root / "p.html").write_text("<html></html>")
    secret = outside / "s.png"
    secret.write_bytes(png_bytes())
    (root / "link.png").symlink_to(secret)  # inside the root, pointing out of it
    (tmp_path / "rootlink").symlink_to(root)  # a root reached through a symlink still matches
    dotdot = f"{root.as_uri()}/sub/../../outside/s.png"
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **kw: opened.append(str(path)) or real_open(path, *a, **kw))

    urls = [good.as_uri(), (root / "p.html").as_uri(), (root / "nope.png").as_uri(), secret.as_uri(),
            (root / "link.png").as_uri(), dotdot, f"file://elsewhere{good}"]
    res = fetch(urls, file_roots=[str(tmp_path / "rootlink")])
    assert res[good.as_uri()].ok and res[good.as_uri()].ext == "png"
    assert res[(root / "p.html").as_uri()].reason == "not_image_content_type"
    assert res[(root / "nope.png").as_uri()].reason == "not_found"
    for refused in (secret.as_uri(), (root / "link.png").as_uri(), dotdot):
        assert res[refused].reason == "file_not_allowed" and "outside ingest.fetch.file_roots" in res[refused].detail
    assert res[f"file://elsewhere{good}"].reason == "bad_url"
    assert os.path.realpath(secret) not in opened and os.path.realpath(good) in opened  # refused: never opened

    (none,) = fetch([good.as_uri()], file_roots=[]).values()  # no roots: no file:// at all
    assert none.reason == "file_not_allowed" and "file_roots is empty" in none.detail


def test_unsupported_schemes_and_strings_that_are_not_absolute_urls():
    res = fetch(["ftp://127.0.0.1/x.png", "images/a.png", "a.png", "/abs/a.png", "//127.0.0.1/a.png",
                 "http:/a.png", "http://[::1/a.png"])
    assert res["ftp://127.0.0.1/x.png"].reason == "unsupported_scheme"
    assert {u for u, r in res.items() if r.reason == "bad_url"} == set(res) - {"ftp://127.0.0.1/x.png"}
