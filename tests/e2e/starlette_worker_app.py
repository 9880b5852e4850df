"""The Starlette example, wrapped once more to say which worker process answered (`X-Worker-Pid`),
for the multi-worker tests (tests/e2e/test_workers.py): gunicorn or uvicorn imports it.

`examples/` must be on the import path (the tests set PYTHONPATH).
"""

from __future__ import annotations

import os
from typing import Any

from starlette_registry import app as _starlette_app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    async def tagged(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            pid = (b"x-worker-pid", str(os.getpid()).encode())
            message = {**message, "headers": [*message.get("headers", []), pid]}
        await send(message)

    await _starlette_app(scope, receive, tagged if scope["type"] == "http" else send)
