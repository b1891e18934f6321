"""Image fetching for ingest: bounded concurrency over http(s) and file URLs,
a per-read timeout and a total deadline per attempt, retries with backoff, a
byte cap, a content-type check, a full Pillow decode with a decompression-bomb
guard, and one address policy per scheme: http(s) hosts pass the address guard,
file:// paths must lie (after resolving '..' and symlinks) under a configured
file root, and anything that is not an absolute URL is refused.

The address guard sits in the connection layer (an httpcore network backend):
the host is resolved once, every address it resolves to is checked, and the
socket connects to the vetted address itself. So redirects and DNS answers that
change between check and connect (rebinding) are covered too, and a refused
host never sees a single packet.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import mimetypes
import os
import random
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from nyx_tasks.core.config import FetchConfig
from nyx_tasks.core.paths import resolve_pkgdata

# Formats we accept, and the extension an image is stored under.
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class BlockedAddressError(Exception):
    """The host resolves to an address the guard refuses."""


@dataclass
class FetchResult:
    url: str
    ok: bool
    reason: str = ""  # named failure reason when not ok
    detail: str = ""
    data: bytes = b""
    image_id: str = ""  # sha256 of the bytes
    mime: str = ""
    ext: str = ""
    width: int = 0
    height: int = 0


class AddressGuard:
    """Refuses every address that is not globally routable (private, loopback,
    link-local, multicast, reserved, shared, unspecified), unless an allowlisted
    network contains it."""

    def __init__(self, allowed_networks: list[str]):
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return True
        return ip.is_global and not ip.is_multicast


def _guarded_backend(guard: AddressGuard):
    import httpcore
    from httpcore._backends.auto import AutoBackend

    class GuardedBackend(httpcore.AsyncNetworkBackend):
        def __init__(self) -> None:
            self._inner = AutoBackend()

        async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
                )
            except (socket.gaierror, TimeoutError) as e:
                raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from e
            addresses = list(dict.fromkeys(info[4][0] for info in infos))
            refused = [a for a in addresses if not guard.allows(a)]
            if refused or not addresses:
                raise BlockedAddressError(f"{host} resolves to refused address(es) {refused}")
            return await self._inner.connect_tcp(addresses[0], port, timeout=timeout,
                                                 local_address=local_address,
                                                 socket_options=socket_options)

        async def connect_unix_socket(self, *a, **kw):  # never used for fetching
            raise BlockedAddressError("unix sockets are not allowed")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    return GuardedBackend()


def make_client(cfg: FetchConfig):
    import httpx

    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=cfg.concurrency),
                                         trust_env=False)
    # httpx does not take a network backend; its pool (httpcore) does. Fail loudly
    # if that ever changes rather than fetch without the guard.
    pool = transport._pool
    if not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpcore pool has no _network_backend; cannot install the address guard")
    pool._network_backend = _guarded_backend(AddressGuard(cfg.allowed_networks))
    return httpx.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=True, max_redirects=5,
        timeout=httpx.Timeout(cfg.timeout_s), headers={"User-Agent": cfg.user_agent},
    )


def decode_image(url: str, data: bytes, cfg: FetchConfig, mime: str = "") -> FetchResult:
    """Fully decode `data` with Pillow; refuse bombs, tiny and unknown formats."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > cfg.max_pixels:
                return FetchResult(url, False, "decompression_bomb", f"{w}x{h} > {cfg.max_pixels} pixels")
            fmt = img.format or ""
            img.load()  # full decode: truncated / corrupt data fails here
    except Image.DecompressionBombError as e:
        return FetchResult(url, False, "decompression_bomb", str(e))
    except Exception as e:  # Pillow raises many types for bad data
        return FetchResult(url, False, "decode_error", f"{type(e).__name__}: {e}")
    if fmt not in FORMAT_EXT:
        return FetchResult(url, False, "unsupported_format", fmt or "unknown")
    if min(w, h) < cfg.min_side:
        return FetchResult(url, False, "too_small", f"{w}x{h}")
    return FetchResult(url, True, data=data, image_id=hashlib.sha256(data).hexdigest(),
                       mime=Image.MIME.get(fmt, mime or "image/" + fmt.lower()),
                       ext=FORMAT_EXT[fmt], width=w, height=h)


class ImageFetcher:
    """Fetches and verifies many image URLs concurrently."""

    def __init__(self, cfg: FetchConfig):
        self.cfg = cfg
        # real paths, so a root that is itself a symlink compares with resolved file paths
        self.file_roots = [os.path.realpath(resolve_pkgdata(r)) for r in cfg.file_roots]

    def fetch_all(self, urls: list[str]) -> dict[str, FetchResult]:
        """Each distinct URL's result. Called where an event loop already runs in this thread (a
        notebook, a Playwright script), the fetches run on a loop of their own in a helper thread."""
        urls = list(dict.fromkeys(urls))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._fetch_all(urls))
        with ThreadPoolExecutor(1, thread_name_prefix="nyx-fetch") as pool:
            return pool.submit(asyncio.run, self._fetch_all(urls)).result()

    async def _fetch_all(self, urls: list[str]) -> dict[str, FetchResult]:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with make_client(self.cfg) as client:
            async def one(u: str) -> FetchResult:
                async with sem:
                    return await self.fetch_one(client, u)
            results = await asyncio.gather(*(one(u) for u in urls))
        return dict(zip(urls, results, strict=True))

    async def fetch_one(self, client, url: str) -> FetchResult:
        try:
            parts = urlsplit(url)
        except ValueError as e:
            return FetchResult(url, False, "bad_url", str(e))
        scheme = parts.scheme.lower()
        if not scheme or (scheme in ("http", "https") and not parts.netloc):
            return FetchResult(url, False, "bad_url", "not an absolute URL")
        if scheme == "file":
            return await asyncio.to_thread(self._read_file, url)
        if scheme not in ("http", "https"):
            return FetchResult(url, False, "unsupported_scheme", scheme)
        res = await self._get_with_retries(client, url)
        if not res.ok:
            return res
        return await asyncio.to_thread(decode_image, url, res.data, self.cfg, res.mime)

    def _allowed_path(self, url: str) -> tuple[str, FetchResult | None]:
        """(real path, None) when `url` names a file under a file root, else ("", the refusal)."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return "", FetchResult(url, False, "bad_url", f"file URL names a host: {parts.netloc!r}")
        if not self.file_roots:
            return "", FetchResult(url, False, "file_not_allowed", "ingest.fetch.file_roots is empty")
        real = os.path.realpath(unquote(parts.path))
        if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.file_roots):
            return "", FetchResult(url, False, "file_not_allowed", f"{real} is outside ingest.fetch.file_roots")
        return real, None

    def _read_file(self, url: str) -> FetchResult:
        path, refused = self._allowed_path(url)
        if refused:
            return refused
        mime = mimetypes.guess_type(path)[0] or ""
        if mime and not mime.startswith("image/"):
            return FetchResult(url, False, "not_image_content_type", mime)
        try:
            # the real path, no symlink at the end (swapped in after the check) and no blocking on a FIFO
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return FetchResult(url, False, "not_found", path)
        except OSError as e:
            return FetchResult(url, False, "read_error", str(e))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return FetchResult(url, False, "read_error", f"{path} is not a regular file")
            data = f.read(self.cfg.max_bytes + 1)
        if len(data) > self.cfg.max_bytes:
            return FetchResult(url, False, "too_large", f"> {self.cfg.max_bytes} bytes")
        return decode_image(url, data, self.cfg, mime)

    async def _get_with_retries(self, client, url: str) -> FetchResult:
        import httpx

        attempt, last = 0, FetchResult(url, False, "unknown")
        while True:
            try:
                # the deadline covers connect, headers and the whole body; timeout_s only each read
                async with asyncio.timeout(self.cfg.deadline_s):
                    last = await self._get(client, url)
                retry = not last.ok and last.reason in {f"http_{s}" for s in RETRY_STATUS}
            except BlockedAddressError as e:
                return FetchResult(url, False, "blocked_address", str(e))
            except httpx.TimeoutException as e:
                last, retry = FetchResult(url, False, "timeout", type(e).__name__), True
            except TimeoutError:
                last = FetchResult(url, False, "deadline", f"no complete response within deadline_s="
                                   f"{self.cfg.deadline_s:g} s (attempt {attempt + 1})")
                retry = True
            except httpx.TooManyRedirects as e:
                return FetchResult(url, False, "too_many_redirects", str(e))
            except (httpx.TransportError, httpx.InvalidURL) as e:
                last, retry = FetchResult(url, False, "connection_error", f"{type(e).__name__}: {e}"), True
            if not retry or attempt >= self.cfg.retries:
                return last
            attempt += 1
            # exponential backoff with jitter, so many clients do not retry in lockstep
            await asyncio.sleep(self.cfg.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))

    async def _get(self, client, url: str) -> FetchResult:
        async with client.stream("GET", url) as r:
            if r.status_code != 200:
                return FetchResult(url, False, f"http_{r.status_code}")
            mime = r.headers.get("content-type", "").split(";")[0].strip().lower()
            if not mime.startswith("image/"):
                return FetchResult(url, False, "not_image_content_type", mime or "(none)")
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.cfg.max_bytes:
                return FetchResult(url, False, "too_large", f"content-length {declared}")
            buf = bytearray()
            async for chunk in r.aiter_bytes():
                buf += chunk
                if len(buf) > self.cfg.max_bytes:
                    return FetchResult(url, False, "too_large", f"> {self.cfg.max_bytes} bytes")
            return FetchResult(url, True, data=bytes(buf), mime=mime)
