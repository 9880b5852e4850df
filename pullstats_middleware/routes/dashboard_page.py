"""The dashboard page as HTML: what `dashboard.py` gathered, written out.

Every value is put in through `markupsafe` (werkzeug's own dependency):
`Markup.format` escapes each argument, so a name from the registry's tag list
(user data, which the registry does not check against the grammar) is text,
never markup. Links are relative, so the page works under any mount point.
The stylesheet is a file of the package, inlined and allowed by its hash: the
page's policy forbids every script and every style but that one.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup

from pullstats_middleware.routes.chart import Point, bar_chart

CSS = resources.files(__package__).joinpath("dashboard.css").read_text(encoding="utf-8")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()}'; "
    "img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PERIODS = (30, 90, 365)
ROWS = 10  # tags in each table
HEALTH = (  # health() key, what it means
    ("buffered_keys", "Buffered keys (not yet written to the store)"),
    ("pending_batches", "Pending batches (waiting for the store)"),
    ("dropped_pulls", "Dropped pulls (buffer full)"),
    ("excluded_pulls", "Excluded pulls (PULL_METRICS_EXCLUDE)"),
    ("dropped_attribution_events", "Dropped HEAD/GET pairing events"),
    ("skipped_keys", "Keys skipped (foreign data in the store)"),
)


@dataclass(frozen=True, slots=True)
class Series:
    points: list[Point]
    unique_pullers: int  # over the whole range
    tag_pulls: int | None = None  # of a repository: how many of its pulls were by tag


@dataclass(frozen=True, slots=True)
class Dashboard:
    repository: str
    days: int
    start: str
    end: str
    repository_history: Series | None  # None: no database, so no history
    reference: str | None  # the tag or digest whose history is shown
    chosen: bool  # asked for; else the most pulled tag, by default
    reference_history: Series | None
    top: Sequence[Mapping[str, Any]]  # listing rows, most pulled first
    stale: Sequence[Mapping[str, Any]]  # listing rows, least recently pulled first
    health: Mapping[str, float]
    flush: str  # the seconds since the last successful flush, or why there is none
    generated: str


def render(page: Dashboard) -> bytes:
    html = Markup(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<title>Pull statistics: {repository}</title><link rel="icon" href="data:,">'
        "<style>{css}</style></head>\n<body><header><h1>Pull statistics: {repository}</h1>"
        '<nav class="periods">{periods}</nav></header>\n<main>{history}\n{tables}\n{health}'
        '</main>\n<footer><p class="note">UTC days {start} to {end}; generated {generated}. '
        "Every count is also a JSON route (see the README).</p></footer></body></html>\n"
    ).format(
        repository=page.repository,
        css=Markup(CSS),  # the package's own file, allowed by its hash
        periods=_periods(page),
        history=_history(page),
        tables=_tables(page),
        health=_health(page),
        start=page.start,
        end=page.end,
        generated=page.generated,
    )
    return str(html).encode()


def _here(page: Dashboard, **changes: Any) -> str:
    """A link to this page with other query parameters."""
    params: dict[str, Any] = {"days": page.days, "ref": page.reference if page.chosen else None}
    params.update(changes)
    return "?" + urlencode({k: v for k, v in params.items() if v is not None})


def _api(page: Dashboard, path: str, **query: Any) -> str:
    """A route of the statistics API, relative to this page (…/pull_statistics/ui/<repo>);
    by default with this page's days."""
    up = "../" * (page.repository.count("/") + 2)
    query = query or {"start": page.start, "end": page.end}
    return f"{up}repository/{quote(page.repository)}/{path}?{urlencode(query)}"


def _periods(page: Dashboard) -> Markup:
    links = [
        Markup("<strong>last {} days</strong>").format(days)
        if days == page.days
        else Markup('<a href="{}">last {} days</a>').format(_here(page, days=days), days)
        for days in PERIODS
    ]
    return Markup(" ").join(links)


def _history(page: Dashboard) -> Markup:
    if page.repository_history is None:
        return Markup(
            '<section id="history"><h2>Pulls per day</h2><p class="notice" id="no-history">'
            "Pull history needs a database: set <code>PULL_METRICS_DATABASE</code> (and run "
            "<code>pullstats db upgrade</code>). The tables and the recorder's health below "
            "work without one.</p></section>"
        )
    series = page.repository_history
    total = sum(point.pulls for point in series.points)
    out = Markup(
        '<section id="repository-history"><h2>Pulls per day, last {days} days</h2>'
        '<p class="note"><span id="repository-total">{total}</span> pulls ({by_tag} by tag), '
        '<span id="repository-pullers">{pullers}</span> unique pullers. A pull is a manifest '
        "GET: a multi-arch pull counts its index and its platform's manifest. "
        '<a href="{json}">JSON</a></p>{legend}{chart}</section>'
    ).format(
        days=page.days,
        total=f"{total:,}",
        by_tag=f"{series.tag_pulls or 0:,}",
        pullers=f"{series.unique_pullers:,}",
        json=_api(page, "pull_statistics/history"),
        legend=_LEGEND,
        chart=bar_chart(
            series.points, chart_id="repository-chart", label=f"Pulls per day of {page.repository}"
        ),
    )
    return out + _reference(page)


_LEGEND = Markup(
    '<p class="legend note"><span class="pulls"></span>pulls'
    '<span class="pullers"></span>unique pullers</p>'
)


def _reference(page: Dashboard) -> Markup:
    names = sorted({str(row["tag_name"]) for row in [*page.top, *page.stale]})
    form = Markup(
        '<form method="get" id="choose"><input type="hidden" name="days" value="{days}">'
        '<label>Tag or digest <input type="text" name="ref" value="{ref}" list="tag-names" '
        'placeholder="v1.0 or sha256:…"></label> <button type="submit">Show</button>'
        '<datalist id="tag-names">{options}</datalist></form>'
    ).format(
        days=page.days,
        ref=page.reference if page.chosen else "",
        options=Markup("").join(Markup('<option value="{}"></option>').format(n) for n in names),
    )
    if page.reference is None or page.reference_history is None:
        return Markup(
            '<section id="reference-history"><h2>A tag or a digest</h2>{}'
            '<p class="note">Nothing pulled yet: choose a tag or a digest.</p></section>'
        ).format(form)
    kind = "manifest" if ":" in page.reference else "tag"
    series = page.reference_history
    return Markup(
        '<section id="reference-history"><h2>{title} <code id="reference">{ref}</code>{why}</h2>'
        '{form}<p class="note"><span id="reference-total">{total}</span> pulls, {pullers} '
        'unique pullers. <a href="{json}">JSON</a></p>{legend}{chart}</section>'
    ).format(
        title="Manifest" if kind == "manifest" else "Tag",
        ref=page.reference,
        why="" if page.chosen else " (the most pulled)",
        form=form,
        total=f"{sum(p.pulls for p in series.points):,}",
        pullers=f"{series.unique_pullers:,}",
        json=_api(page, f"{kind}/{quote(page.reference)}/pull_statistics/history"),
        legend=_LEGEND,
        chart=bar_chart(
            series.points, chart_id="reference-chart", label=f"Pulls per day of {page.reference}"
        ),
    )


def _date(value: str | None) -> Markup:
    if value is None:
        return Markup('<span class="never">never</span>')
    return Markup('<time datetime="{}">{}</time>').format(value, value.replace("T", " "))


def _tag(page: Dashboard, row: Mapping[str, Any]) -> Markup:
    return Markup('<a href="{}">{}</a>').format(_here(page, ref=row["tag_name"]), row["tag_name"])


def _tables(page: Dashboard) -> Markup:
    top = Markup("").join(
        Markup('<tr data-tag="{}"><td>{}</td><td class="number">{}</td><td>{}</td></tr>').format(
            row["tag_name"],
            _tag(page, row),
            row["tag_pull_count"],
            _date(row["last_tag_pull_date"]),
        )
        for row in page.top
    )
    stale = Markup("").join(
        Markup(
            '<tr data-tag="{}"><td>{}</td><td>{}</td><td>{}</td><td class="number">{}</td></tr>'
        ).format(
            row["tag_name"],
            _tag(page, row),
            _date(row["last_tag_pull_date"]),
            _date(row["last_push_date"]),
            row["tag_pull_count"],
        )
        for row in page.stale
    )
    empty = Markup('<tr><td colspan="4" class="never">no tags</td></tr>')
    return Markup(
        '<div class="columns"><section id="most-pulled"><h2>Most pulled tags</h2>'
        '<p class="note">All time. <a href="{top_json}">JSON</a></p><table><thead><tr>'
        '<th>Tag</th><th class="number">Pulls</th><th>Last pulled (UTC)</th></tr></thead>'
        '<tbody>{top}</tbody></table></section><section id="least-recent">'
        '<h2>Least recently pulled tags</h2><p class="note">Never-pulled tags first, with '
        'when they were pushed. <a href="{stale_json}">JSON</a></p><table><thead><tr>'
        "<th>Tag</th><th>Last pulled (UTC)</th><th>Last pushed (UTC)</th>"
        '<th class="number">Pulls</th></tr></thead><tbody>{stale}</tbody></table></section></div>'
    ).format(
        top=top or empty,
        stale=stale or empty,
        top_json=_api(page, "pull_statistics", sort="pull_count", order="desc", limit=ROWS),
        stale_json=_api(page, "pull_statistics", sort="last_pull_date", limit=ROWS),
    )


def _health(page: Dashboard) -> Markup:
    rows = Markup("").join(
        Markup('<tr data-key="{}"><th>{}</th><td class="number">{}</td></tr>').format(
            key, label, f"{page.health.get(key, 0):,}"
        )
        for key, label in HEALTH
    )
    return Markup(
        '<section id="health"><h2>Recorder health (this process)</h2><table><tbody>{rows}'
        '<tr data-key="seconds_since_flush"><th>Seconds since the last successful flush to '
        'the database</th><td class="number">{flush}</td></tr></tbody></table></section>'
    ).format(rows=rows, flush=page.flush)
