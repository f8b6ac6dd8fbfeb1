"""The live jobs page at `/` (docs/browsers.md): plain HTML, JavaScript and CSS shipped in the
package, read once when the app is built and served from memory, each with a strong ETag and
its 304, as WhiteNoise serves static files. No build step, nothing from another origin."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from app.api.etags import etag_matches

# path -> (file in app/api/ui, content type)
ASSETS = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", b"text/css; charset=utf-8"),
}
# The page runs only its own script and style, talks only to its own origin, and is framed by
# no one: a document shown in it (the writers' JSON) can never run as code.
_SECURITY = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    # The page's own requests may carry ?access_token=: never name them to another site.
    (b"referrer-policy", b"no-referrer"),
]


class Asset(NamedTuple):
    body: bytes
    etag: bytes
    headers: list[tuple[bytes, bytes]]
    not_modified: list[tuple[bytes, bytes]]


def load_assets() -> dict[str, Asset]:
    """Every asset, read from the package now: a request never touches a file."""
    folder = resources.files("app.api") / "ui"
    assets = {}
    for path, (name, content_type) in ASSETS.items():
        body = (folder / name).read_bytes()
        etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
        # no-cache: a browser revalidates (a 304) and so always runs the page this process serves.
        common = [(b"etag", etag), (b"cache-control", b"no-cache"), *_SECURITY]
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *common]
        assets[path] = Asset(body, etag, headers, common)
    return assets


class PageEndpoint:
    """GET/HEAD `/` and the page's script and style."""

    def __init__(self) -> None:
        self._assets = load_assets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asset = self._assets[scope["path"]]
        for name, value in scope["headers"]:
            if name == b"if-none-match" and etag_matches(value, asset.etag):
                await send({"type": "http.response.start", "status": 304, "headers": asset.not_modified})
                await send({"type": "http.response.body", "body": b""})
                return
        await send({"type": "http.response.start", "status": 200, "headers": asset.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else asset.body})
