"""The Flask example, wrapped once more to say which worker process answered (`X-Worker-Pid`),
for the multi-worker tests (tests/e2e/test_workers.py): gunicorn imports it.

`examples/` must be on the import path (the tests set PYTHONPATH).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from flask_registry import app as _flask_app


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

    return _flask_app(environ, start)  # type: ignore[no-any-return]
