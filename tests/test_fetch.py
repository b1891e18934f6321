"""Image fetching against a real loopback HTTP server."""

import pytest

from nyx_tasks.config import FetchConfig
from nyx_tasks.fetch import AddressGuard, ImageFetcher
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


def test_file_urls_and_unsupported_schemes(tmp_path):
    good = tmp_path / "g.png"
    good.write_bytes(png_bytes())
    page = tmp_path / "p.html"
    page.write_text("<html></html>")
    res = fetch([good.as_uri(), page.as_uri(), (tmp_path / "nope.png").as_uri(), "ftp://127.0.0.1/x.png"])
    assert res[good.as_uri()].ok
    assert res[page.as_uri()].reason == "not_image_content_type"
    assert res[(tmp_path / "nope.png").as_uri()].reason == "not_found"
    assert res["ftp://127.0.0.1/x.png"].reason == "unsupported_scheme"
    (blocked,) = fetch([good.as_uri()], allow_file_urls=False).values()
    assert blocked.reason == "blocked_file_url"
