"""`pullstats export` as an operator meets it: one-line errors (exit 2), an export
killed mid-way that leaves no half-written file, and a progress bar drawn only on a
terminal. The interrupted exports run as real processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from pullstats_middleware.cli import main
from pullstats_middleware.config import KEYS
from pullstats_middleware.durable import Database
from pullstats_middleware.store import StoreUnavailable
from tests.e2e.services import RedisServer, free_port

# The export, slowed after its first 2,000 rows so a signal lands mid-way.
SLOW_EXPORT = """
import signal, sys, time
from pullstats_middleware.cli import main
# Ctrl-C as at a terminal: a job a shell starts in the background (CI's, say) begins
# with SIGINT ignored, and Python then installs no KeyboardInterrupt handler of its own.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pullstats_middleware.durable import export
streamed = export.rows
def slowly(*args, **kwargs):
    for n, row in enumerate(streamed(*args, **kwargs)):
        if n > 2000 and n % 100 == 0:
            time.sleep(0.01)
        yield row
export.rows = slowly
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def fill_history(url: str, count: int) -> None:
    """`count` rows of daily history, written by the database itself."""
    database = Database(url)
    with database.engine.begin() as connection:
        if database.dialect == "postgresql":
            connection.exec_driver_sql(
                "INSERT INTO tag_daily (repository, tag, day, pull_count) "
                "SELECT 'big/app', 't' || (i / 100), "
                "to_char(DATE '2026-01-01' + mod(i, 100), 'YYYY-MM-DD'), 1 + mod(i, 7) "
                f"FROM generate_series(0, {count - 1}) AS i"
            )
        else:
            connection.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
                f"WHERE i < {count - 1}) INSERT INTO tag_daily (repository, tag, day, "
                "pull_count) SELECT 'big/app', "
                "'t' || (i / 100), date('2026-01-01', '+' || (i % 100) || ' days'), "
                "1 + i % 7 FROM n"
            )
    database.close()


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> None:
    assert main(["export", *argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pullstats: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert out == ""


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    Database(url).upgrade()
    db = ["--database", url]
    fmt = ["--format", "csv"]
    one_line_error(
        capsys, ["--all", *fmt, "--since", "2026-02-30", *db], "invalid date '2026-02-30'"
    )
    one_line_error(capsys, ["--all", *fmt, "--until", "yesterday", *db], "--until: invalid date")
    one_line_error(capsys, ["--all", *fmt, "--since", "2026-05-02", "--until", "2026-05-01", *db],
                   "--since 2026-05-02 is after --until 2026-05-01")  # fmt: skip
    one_line_error(capsys, ["--all", "--kind", "pulls", *fmt, *db], "--kind: invalid choice")
    one_line_error(capsys, ["--all", "--format", "xml", *db], "--format: invalid choice")
    one_line_error(capsys, ["--all", *db], "required: --format")
    one_line_error(capsys, ["--all", "--repository", "a/b", *fmt, *db], "not allowed with")
    one_line_error(capsys, [*fmt, *db], "one of the arguments --repository --all is required")
    one_line_error(capsys, ["--repository", "A/B", *fmt, *db], "invalid repository name")
    one_line_error(capsys, ["--all", *fmt], "no database configured")
    one_line_error(capsys, ["--all", *fmt, "--database", "sqlite:///" + str(tmp_path / "no.db")],
                   "no SQLite database at")  # fmt: skip
    assert not (tmp_path / "no.db").exists()  # a reader leaves no empty database behind
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    sa.create_engine(bare).connect().close()  # a file, never migrated
    one_line_error(capsys, ["--all", *fmt, "--database", bare], "is at schema none",
                   "run `pullstats db upgrade`")  # fmt: skip
    one_line_error(capsys, ["--all", *fmt, *db, "--redis-url", f"redis://127.0.0.1:{free_port()}"],
                   "cannot reach Redis", "--sql-only")  # fmt: skip
    one_line_error(capsys, ["--all", *fmt, *db, "--output", str(tmp_path / "no" / "x.csv")],
                   "cannot write", "No such file or directory")  # fmt: skip
    one_line_error(capsys, ["--all", *fmt, *db, "--output", str(tmp_path)], "Is a directory")


def test_malformed_counts_in_redis_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    Database(url).upgrade()
    client = redis.Redis.from_url(redis_server.url)
    client.hset("pull_metrics/tag/org/app/v1", "pull_count", "many")  # not what we write
    argv = ["--all", "--format", "csv", "--database", url, "--redis-url", redis_server.url]
    one_line_error(capsys, [*argv, "--output", str(tmp_path / "t.csv")],
                   "malformed statistics in Redis", "pull_metrics/tag/org/app/v1")  # fmt: skip
    assert not (tmp_path / "t.csv").exists()
    client.delete("pull_metrics/tag/org/app/v1")


def test_a_failure_mid_export_leaves_the_previous_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pullstats_middleware.durable import export

    url = f"sqlite:///{tmp_path / 'p.db'}"
    Database(url).upgrade()
    fill_history(url, 5000)
    target = tmp_path / "history.csv"
    target.write_text("the previous export\n")
    streamed, failed = export.rows, []

    def failing(*args: object, **kwargs: object) -> object:
        for n, row in enumerate(streamed(*args, **kwargs)):  # type: ignore[arg-type]
            if n == 3000:
                failed.append(n)
                raise StoreUnavailable("the database: OperationalError: server closed")
            yield row

    monkeypatch.setattr(export, "rows", failing)
    argv = ["--all", "--kind", "history", "--format", "csv", "--database", url]
    one_line_error(capsys, [*argv, "--output", str(target)], "server closed", "nothing written")
    assert failed == [3000]  # the fault happened, mid-export
    assert target.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("p.db")] == ["history.csv"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_export_leaves_no_half_written_file(
    database_url: str, tmp_path: Path, how: signal.Signals
) -> None:
    fill_history(database_url, 20_000)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "history.ndjson"
    command = [sys.executable, "-c", SLOW_EXPORT, "export", "--all", "--kind", "history"]
    command += ["--format", "ndjson", "--database", database_url, "--output", str(target)]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline, partial = time.monotonic() + 60, 0
    while not partial and time.monotonic() < deadline and child.poll() is None:
        partial = sum(p.stat().st_size for p in out.glob(".history.ndjson.*.part"))
        time.sleep(0.01)
    assert partial > 0, "the export never started writing"
    child.send_signal(how)
    _, err = child.communicate(timeout=60)
    # The fault happened: the child ended by the signal, not by finishing.
    expected = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[how]
    assert child.returncode == expected, err
    assert not target.exists()
    left = list(out.iterdir())
    if how == signal.SIGKILL:  # no code runs: only the temporary name can be left behind
        assert [p.name.startswith(".history.ndjson.") for p in left] == [True]
    else:
        assert left == []
    if how == signal.SIGTERM:
        assert "stopped by SIGTERM; nothing written to" in err


def run_with_stderr(argv: list[str], terminal: bool) -> tuple[int, str]:
    """`pullstats …` as a process whose stderr is a pseudo-terminal, or a pipe."""
    command = [sys.executable, "-m", "pullstats_middleware.cli", *argv]
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stderr
    primary, secondary = pty.openpty()
    # A terminal of 24 x 100 (a new pseudo-terminal has no size: tqdm would draw nothing).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    return child.wait(60), b"".join(chunks).decode(errors="replace")


def test_the_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    Database(url).upgrade()
    fill_history(url, 3000)
    argv = ["export", "--all", "--kind", "history", "--format", "csv", "--database", url]
    argv += ["--output", str(tmp_path / "h.csv")]
    code, err = run_with_stderr(argv, terminal=True)
    assert code == 0, err
    assert "pullstats export" in err and "100%" in err and "3.00k/3.00k" in err
    assert " rows/s" in err
    assert run_with_stderr(argv, terminal=False) == (0, "")  # a pipe: not a character
    assert run_with_stderr([*argv, "--quiet"], terminal=True) == (0, "")
    assert len((tmp_path / "h.csv").read_text().splitlines()) == 3001
