"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium, and
the repository the dashboard tests and benchmark show: real pushes and pulls through
`pullstats proxy`, over months of back-dated history.

Selenium talks to Debian's chromedriver, the one built for that Chromium: given its
path, Selenium never tries to download a driver, so this works offline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from pullstats_middleware.store import Batch, ManifestDelta, RedisStore, TagDelta
from tests.e2e.oci_image import build_tiny_image
from tests.e2e.services import (
    DockerRegistry,
    PullstatsProxy,
    ServiceError,
    require_binary,
    skopeo_pull,
    skopeo_push,
)

REPOSITORY = "team/web-app"
PULLED = ("v1.2", "v1.1", "v1.0")  # pulled in the past, most first
NEW = "v1.3-rc1"  # pushed through the proxy, never pulled
LEGACY = "legacy"  # pushed straight to the registry: the statistics never saw it


def chromium(width: int = 1100, height: int = 900) -> webdriver.Chrome:
    """A new headless Chromium; `quit()` it. Its console is in `get_log("browser")`."""
    binary = require_binary("chromium")
    driver_binary = require_binary("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root otherwise
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_binary))


def full_page_screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """The whole page, not only the window: the window grows to the page's height."""
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    driver.set_window_size(max(width, 1100), height + 120)
    if not driver.save_screenshot(str(path)):
        raise ServiceError(f"Chromium could not save a screenshot to {path}")
    return path


def first_contentful_paint(driver: webdriver.Chrome) -> float | None:
    """Milliseconds from navigation start to the first text or SVG painted (the
    Performance API's `first-contentful-paint`), None if not painted yet."""
    entries = driver.execute_script(
        "return performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)"
    )
    return float(entries[0]) if entries else None


def seed(
    registry: DockerRegistry, proxy: PullstatsProxy, redis_url: str, workdir: Path, days: int
) -> dict[str, int]:
    """Pushes the repository's tags, writes `days` days of back-dated pulls into Redis as
    the recorder would (the proxy's flusher moves them to SQL), then pulls the tags
    through the proxy today (real pulls). Returns the pulls each tag should count."""
    digests, counted = {}, dict.fromkeys(PULLED, 0)
    for n, tag in enumerate((*PULLED, NEW, LEGACY)):
        image = build_tiny_image(workdir / tag, tag, content=f"{tag} {n}\n".encode())
        skopeo_push(image.oci_ref, registry if tag == LEGACY else proxy.address, REPOSITORY, tag)
        digests[tag] = image.manifest_digest
    store = RedisStore(redis.Redis.from_url(redis_url), durable=True)
    today = dt.datetime.now(dt.timezone.utc).date()
    for back in range(days, 0, -1):
        day = today - dt.timedelta(days=back)
        batch = Batch(f"seed-{day}")
        for rank, tag in enumerate(PULLED):
            pulls = _pulls(day, back, rank)
            counted[tag] += pulls
            if pulls == 0:
                continue
            at = f"{day.isoformat()}T{8 + rank:02d}:30:00Z"
            clients = tuple(f"node-{(back * 7 + rank + k) % 40}" for k in range(min(pulls, 6)))
            batch.tags.append(TagDelta(REPOSITORY, tag, pulls, at, digests[tag], clients))
            batch.manifests.append(ManifestDelta(REPOSITORY, digests[tag], pulls, at, clients))
        store.apply(batch, window=10.0, skew=1.0)
    store.client.close()
    for tag, times in zip(PULLED, (3, 2, 1), strict=True):
        for _ in range(times):
            pulled = skopeo_pull(proxy.docker_ref(REPOSITORY, tag), workdir / "pulled")
            shutil.rmtree(pulled, ignore_errors=True)
        counted[tag] += times
    return counted


def _pulls(day: dt.date, back: int, rank: int) -> int:
    """A made-up but plausible curve, the same every run: the newest tag shipped 45 days
    ago and grows, the one before fades out after it, the oldest trickles; fewer pulls
    at weekends."""
    noise = random.Random(f"{day}/{rank}").uniform(0.7, 1.3)
    if rank == 0:
        base = 0.0 if back > 45 else 8 + (45 - back) / 2
    elif rank == 1:
        base = 16.0 if back > 45 else max(2.0, back / 3)
    else:
        base = max(1.0, back / 15)
    return round(base * noise * (0.5 if day.weekday() >= 5 else 1.0))


def wait_until_counted(proxy: PullstatsProxy, counted: dict[str, int]) -> None:
    """Until the listing route counts every pull `seed` made (the proxy records in the
    background); ServiceError after 30 s."""
    listing = f"{proxy.url}/api/v1/repository/{REPOSITORY}/pull_statistics?sort=tag_name"
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(listing, timeout=30) as answer:
            rows = {row["tag_name"]: row["tag_pull_count"] for row in json.load(answer)["tags"]}
        if all(rows.get(tag) == count for tag, count in counted.items()):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"the proxy counted {rows}, not {counted}")
        time.sleep(0.2)


def texts(driver: webdriver.Chrome, selector: str) -> list[str]:
    return [element.text for element in driver.find_elements("css selector", selector)]


def attributes(driver: webdriver.Chrome, selector: str, *names: str) -> list[tuple[Any, ...]]:
    """The attributes of every element matching `selector`, read in one round trip."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => arguments[1].map(n => e.getAttribute(n)))"
    )
    return [tuple(row) for row in driver.execute_script(script, selector, list(names))]
