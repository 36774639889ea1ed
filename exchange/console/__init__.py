"""The operator console: a local web server between one operator's browser and the broker.

``exchange console --as OPERATOR_DIR --broker URL`` starts it on 127.0.0.1 and prints a
one-time URL. The server talks to the broker with the operator's certificate (the SDK's
``Node``), polls it every second, and pushes one JSON snapshot per poll to the page over
Server-Sent Events (``/events``). The page is static HTML, CSS and plain JavaScript shipped in
this package (``static/``): no build step, no CDN, nothing fetched at run time; its charts are
inline SVG drawn by ``console.js``.

Parts: ``model`` (pure: broker JSON and ``/metrics`` text in, the snapshot out; it copies
named fields only, never a record's contents), ``server`` (the aiohttp app, the polling loop,
the sessions, the actions).

Security model:

- **The key never reaches the browser.** Approvals, rejections, revocations and the log check
  are requests to the console server, which signs decisions with the operator's key through
  the SDK (``Node.decide``) and verifies proofs with the core's code. A browser holds no key,
  so a page (or an extension, or a cache) can leak at most what the page shows, and the
  key stays in the operator's directory at 0600 like every other command's.
- **One-time token, then a session cookie.** The URL printed at start carries a random token
  (``secrets.token_urlsafe(32)``). The first request that presents it gets a random session
  id in a cookie (HttpOnly, SameSite=Strict, Path=/) and a redirect to ``/``; the token is
  then spent, and a second use is refused. Every other route (the page, its static files,
  ``/api/*``, ``/events``) needs the cookie; without it, or with a wrong token, the answer is
  403 with no page content.
- **Cross-site requests.** A state-changing POST needs the session's CSRF value in the
  ``X-Console-CSRF`` header (the page reads it from its own ``<meta>``; another site's form
  cannot set a header) and, when the browser sends one, an ``Origin`` equal to the console's
  own. Requests naming another ``Host`` than the loopback address it listens on are refused
  (DNS rebinding).
- **Loopback only** unless ``--allow-remote``: whoever reaches the console with a session acts
  with the operator's key.
- **Headers**: ``Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`` (no
  inline script: everything is in ``console.js``), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` (the token URL is never sent on).

The console shows counts and metadata only: never a record's contents or keys.
"""

from __future__ import annotations

from exchange.console.model import Model, Sample
from exchange.console.server import Console, create_app, parse_listen, serve

__all__ = ["Console", "Model", "Sample", "create_app", "parse_listen", "serve"]
