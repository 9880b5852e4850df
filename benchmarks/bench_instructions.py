"""Instructions per request, bare app against wrapped app: a figure noise cannot move.

    python benchmarks/bench_instructions.py [--compare DIR] [--requests 2000]

bench_server.py reads CPU time under a real server, which on a shared machine
drifts by a third from one run to the next; a change of one or two µs hides in
it. This script counts what the CPU executes instead: each request kind is sent
through the Starlette example in process (the bare app and the app as shipped,
wrapped, with the memory store), under valgrind's callgrind, and the
instructions per request are the difference between a run of N + requests and
a run of N, divided by the requests. The same code gives the same count within
a few dozen instructions, whatever else the machine does (PYTHONHASHSEED is
fixed). Instructions are not time: a cache miss costs more than an instruction,
so read the count as the work the middleware adds, and bench_server.py for what
that work costs on a server. `--compare DIR` adds the wrapped app with the
pullstats_middleware package found in DIR (an older checkout, say).
Needs valgrind; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from figures import print_table  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
REPOSITORY, TAG = "library/hello", "v1"
# As uvicorn hands them to the app for an h2load request (bench_server.py's load).
HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"accept", b"application/vnd.oci.image.manifest.v1+json"),
]
WARM_UP = 1000  # requests in the shorter run: imports, caches, first keys all in it


def drive(app_name: str, method: str, path: str, requests: int) -> None:
    """Send `requests` requests through the app, in this process (run under valgrind)."""
    sys.path.insert(0, str(HERE))
    import server_apps  # type: ignore[import-not-found]

    app = getattr(server_apps, app_name)()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def run() -> None:
        for _ in range(requests):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": list(HEADERS),
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            await app(scope, receive, send)

    asyncio.run(run())


def instructions(app_name: str, method: str, path: str, requests: int, tree: str) -> int:
    """Instructions callgrind counted in a whole run of `requests` requests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULL_METRICS_", "USER_EV"))}
    env["PYTHONHASHSEED"] = "0"
    if tree:
        env["PYTHONPATH"] = tree
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--drive", app_name, method, path, str(requests),
        ]  # fmt: skip
        subprocess.run(command, env=env, check=True, capture_output=True)
        totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise SystemExit("bench: callgrind wrote no totals")
    return int(totals.group(1))


def per_request(app_name: str, method: str, path: str, requests: int, tree: str = "") -> float:
    short = instructions(app_name, method, path, WARM_UP, tree)
    long = instructions(app_name, method, path, WARM_UP + requests, tree)
    return (long - short) / requests


def paths() -> dict[str, tuple[str, str]]:
    """The request kinds (method, path), read from the example's registry."""
    sys.path.insert(0, str(HERE.parent / "examples"))
    import starlette_registry  # type: ignore[import-not-found]

    repo = starlette_registry.registry.repositories[REPOSITORY]
    digest = repo.tags[TAG]
    blob = next(iter(starlette_registry.registry.blobs))
    return {
        "manifest GET by tag": ("GET", f"/v2/{REPOSITORY}/manifests/{TAG}"),
        "manifest GET by digest": ("GET", f"/v2/{REPOSITORY}/manifests/{digest}"),
        "manifest HEAD by tag": ("HEAD", f"/v2/{REPOSITORY}/manifests/{TAG}"),
        "blob GET (not a manifest)": ("GET", f"/v2/{REPOSITORY}/blobs/{blob}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--compare", metavar="DIR", default="", help="also the wrapped app served from DIR"
    )
    parser.add_argument("--drive", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        app_name, method, path, requests = args.drive
        drive(app_name, method, path, int(requests))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench: needs valgrind (apt-get install valgrind)")
    compare = str(Path(args.compare).resolve()) if args.compare else ""
    rows = []
    for kind, (method, path) in paths().items():
        bare = per_request("starlette_bare", method, path, args.requests)
        wrapped = per_request("starlette_wrapped", method, path, args.requests)
        rows.append((kind, "bare", f"{bare:,.0f}", ""))
        rows.append(("", "wrapped, memory store", f"{wrapped:,.0f}", f"{wrapped - bare:+,.0f}"))
        if compare:
            other = per_request("starlette_wrapped", method, path, args.requests, compare)
            label = f"wrapped, memory store ({Path(compare).name})"
            rows.append(("", label, f"{other:,.0f}", f"{other - bare:+,.0f}"))
        print(".", end="", flush=True, file=sys.stderr)
    print(
        f"\nStarlette example in process, under callgrind: instructions per request "
        f"({WARM_UP + args.requests:,} requests less {WARM_UP:,}, divided by {args.requests:,})"
    )
    print_table(("request", "set-up", "instructions/request", "added"), rows)


if __name__ == "__main__":
    main()
