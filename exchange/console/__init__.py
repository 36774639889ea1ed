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
- **One-time token, then a cookie and a secret.** The URL printed at start carries a random
  token (``secrets.token_urlsafe(32)``). The first GET that presents it (not a HEAD: link
  previews and prefetchers must not spend it) gets a session: a random id in a cookie
  (HttpOnly, SameSite=Strict, Path=/; Secure behind an https ``--public-origin``) and a
  random secret in the redirect's fragment, ``/#s=SECRET``. A fragment never travels to a
  server; the page moves it to ``sessionStorage`` and out of the address bar and history
  (``history.replaceState``). The token is then spent, and a second use is refused.
- **The cookie alone is never enough.** Browsers send the cookies of 127.0.0.1 to every port
  of it (RFC 6265 §8.5: cookies do not provide isolation by port), so any other local HTTP
  service the operator's browser visits receives ``exchange_console``. ``sessionStorage`` is
  per origin, port included: no other service can read the secret. So ``/api/*`` needs the
  cookie *and* the secret in the ``X-Console-Session`` header; ``/events`` (EventSource
  cannot set a header) needs the cookie and a ticket from ``POST /api/ticket``, good once and
  for 30 s (a ticket rather than the secret in the query string: URLs land in logs). The
  page and its static files need the cookie only: they hold no secret, so the cookie's
  thief learns nothing from them. Without these, or with a wrong token, the answer is 403
  with no page content.
- **Cross-site requests.** Another site's form or link cannot set a header, so the secret is
  the CSRF token too; a state-changing POST also needs, when the browser sends one, an
  ``Origin`` equal to the console's own (``--public-origin`` when a TLS proxy fronts it).
  Requests naming another ``Host`` than the loopback address it listens on are refused (DNS
  rebinding).
- **Loopback only** unless ``--allow-remote``: whoever reaches the console with a session acts
  with the operator's key.
- **The log's baseline is the operator's, not the process's.** The consistency check starts
  from the checkpoint the last check ended at, kept as its signed note in
  ``OPERATOR_DIR/console-checkpoint.txt`` and re-verified with the log key at each check; the
  very first check of a directory records the baseline and says so (it proves nothing yet).
  Between checks, every polled checkpoint is compared with those seen before: another root
  for a size seen is a split view, a smaller size a shrunk log, both shown in red.
- **Headers**: ``Content-Security-Policy: default-src 'self'; frame-ancestors 'none'`` (no
  inline script: everything is in ``console.js``), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` (the token URL is never sent on).

The console shows counts and metadata only: never a record's contents or keys.
"""

from __future__ import annotations

from exchange.console.model import Model, Sample
from exchange.console.server import Console, create_app, parse_listen, parse_origin, serve

__all__ = ["Console", "Model", "Sample", "create_app", "parse_listen", "parse_origin", "serve"]
