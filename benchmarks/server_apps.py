"""The apps bench_server.py serves: each example as shipped (wrapped) and the same
app without the middleware (bare), for uvicorn --factory and gunicorn.

The wrapped apps are the examples themselves; the bare ones are built from the
examples' own registry and view, so the two differ by the middleware alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import flask_registry  # type: ignore[import-not-found]
import starlette_registry  # type: ignore[import-not-found]
from starlette.applications import Starlette
from starlette.routing import Route


def starlette_wrapped() -> Any:
    return starlette_registry.app


def starlette_bare() -> Any:
    return Starlette(
        routes=[Route("/v2/{path:path}", starlette_registry.v2, methods=["GET", "HEAD"])]
    )


# Flask: the example replaced app.wsgi_app by the middleware; the middleware's
# `app` is Flask's own wsgi_app, which is the bare application.
flask_wrapped = flask_registry.app
flask_bare = flask_registry.app.wsgi_app.app
