"""The intake role's application plus a bare endpoint, used only by benchmarks/webhook_load.py.

`/bench/bare/` on the intake role's own server (uvicorn, uvloop, httptools, started as the bootstrap starts it):
read the body, decode the JSON and answer 202; no auth, no database, no queue. It is the same-server floor for the
intake role, as `/bench/bare/` on gunicorn (benchmarks/webhook_urls.py) is for the web role.
"""

from __future__ import annotations

import json
from typing import Any

from tradesite.intake import application as intake_application

_HEADERS = [(b"content-type", b"application/json")]


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http" or scope["path"] != "/bench/bare/":
        await intake_application(scope, receive, send)
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    data = json.loads(body)
    await send({"type": "http.response.start", "status": 202, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": json.dumps({"ok": isinstance(data, dict)}).encode()})
