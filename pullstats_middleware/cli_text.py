"""What the `pullstats` commands print: the demo's instructions and the tables."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

_ACCEPT = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"


def demo_text(
    base: str, flush: float, digest: str, index: str, amd64: str, *, database: str | None = None
) -> str:
    def get(path: str, *, head: bool = False, accept: bool = True) -> str:
        words = ["curl", "-sI" if head else "-s"]
        words += ["-H", f"Accept: {_ACCEPT}"] if accept else []
        return shlex.join([*words, base + path])

    hello, multi, stats = "/v2/library/hello/manifests", "/v2/library/multi/manifests", "/api/v1"
    flushed = (
        f", and flushed to {database} (history: …/pull_statistics/history)" if database else ""
    )
    return "\n".join(
        [
            f"pullstats demo: an in-memory registry with pull statistics at {base}",
            f"  library/hello:v1     {digest}",
            f"  library/multi:latest {index} (linux/amd64, linux/arm64)",
            f"  Counts live in this process's memory, written every {flush:g} s{flushed}.",
            "",
            "# 1. pull by tag (docker, podman, skopeo, crane): +1 tag pull, +1 manifest pull",
            get(f"{hello}/v1"),
            "# 2. pull by digest: +1 manifest pull, the tag is not counted",
            get(f"{hello}/{digest}"),
            "# 3. containerd, Kubernetes: HEAD the tag, then GET the digest: +1 tag, +1 manifest",
            get(f"{hello}/v1", head=True),
            get(f"{hello}/{digest}"),
            "# 4. multi-arch: the index by tag, then the linux/amd64 image by digest",
            get(f"{multi}/latest"),
            get(f"{multi}/{amd64}"),
            "# 5. the statistics (library/hello:v1 now: 2 tag pulls, 3 manifest pulls)",
            get(f"{stats}/repository/library/hello/tag/v1/pull_statistics", accept=False),
            get(
                f"{stats}/repository/library/hello/manifest/{digest}/pull_statistics", accept=False
            ),
            get(f"{stats}/repository/library/multi/tag/latest/pull_statistics", accept=False),
            "",
        ]
    )


def stats_table(repository: str, payload: Mapping[str, Any]) -> str:
    labels = {
        "tag_name": "tag",
        "tag_pull_count": "tag pulls",
        "last_tag_pull_date": "last tag pull",
        "current_manifest_digest": "current manifest",
        "manifest_digest": "manifest",
        "manifest_pull_count": "manifest pulls",
        "last_manifest_pull_date": "last manifest pull",
    }
    rows = [("repository", repository)]
    for key, value in payload.items():
        shown = value if value is not None else ("never" if "date" in key else "-")
        rows.append((labels.get(key, key), str(shown)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def tag_table(rows: list[dict[str, Any]]) -> str:
    header = ("TAG", "PULLS", "LAST PULL", "LAST PUSH")
    lines = [header] + [
        (r["tag_name"], str(r["tag_pull_count"]), r["last_tag_pull_date"] or "never",
         r["last_push_date"] or "-")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip
