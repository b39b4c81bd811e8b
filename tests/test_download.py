"""Tests of resshift_core.download against a local HTTP server whose behaviour each test scripts.

The server listens on 127.0.0.1 only. Each test registers *routes*: ``path -> handler(request, n)`` where ``n`` counts
earlier requests to the same path, so a test can, say, cut the first answer and serve the second properly.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import pathlib
import random
import re
import socket
import threading
import time

import pytest

from resshift_core import download
from resshift_core.download import (
    ChecksumError,
    DownloadError,
    OfflineError,
    default_cache_dir,
    download_file,
    sha256_of,
)
from resshift_core.errors import ResShiftError

BODY = random.Random(1234).randbytes(200_000)
BODY_SHA = hashlib.sha256(BODY).hexdigest()
CHUNK = 16 * 1024  # Small reads so cuts and stalls land in the middle of the transfer.


# --------------------------------------------------------------------------------------------------------------------
# Scripted local server


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 framing relies on Content-Length, which is how the client can tell a cut answer from a complete one.
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        state: FakeServer = self.server.state  # type: ignore[attr-defined]
        n = state.record(self.path, {k.lower(): v for k, v in self.headers.items()})
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route(self, n)

    def log_message(self, *args: object) -> None:
        pass  # Keep pytest output readable.


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # The client hanging up on a stalled handler is expected here.


class FakeServer:
    """Routes, a log of every request, and an event that frees stalled handlers at teardown."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.routes: dict = {}
        self.requests: list = []
        self.release = threading.Event()
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return self.base_url + path

    def record(self, path: str, headers: dict) -> int:
        with self._lock:
            n = sum(1 for p, _ in self.requests if p == path)
            self.requests.append((path, headers))
            return n

    def requests_to(self, path: str) -> list:
        with self._lock:
            return [headers for p, headers in self.requests if p == path]


def send_body(
    handler: http.server.BaseHTTPRequestHandler,
    body: bytes,
    *,
    honour_range: bool = True,
    cut_after: int | None = None,
) -> None:
    """Answer with ``body`` (or the requested range of it); with ``cut_after``, close after that many body bytes."""
    start = 0
    range_header = handler.headers.get("Range")
    if honour_range and range_header:
        start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
        if start >= len(body):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(body)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
        handler.send_response(200)
    payload = body[start:]
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    if cut_after is None:
        handler.wfile.write(payload)
        return
    handler.wfile.write(payload[:cut_after])
    handler.wfile.flush()
    handler.close_connection = True


@pytest.fixture
def server():
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    state = FakeServer(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _fast_and_online(monkeypatch):
    """No sleeping between retries, and no offline mode inherited from the developer's shell."""
    monkeypatch.setattr(download, "_RETRY_BACKOFF_S", 0.0)
    monkeypatch.delenv("RESSHIFT_OFFLINE", raising=False)


def leftovers(dest: pathlib.Path) -> list:
    """Files next to ``dest`` other than ``dest`` itself (stray .part or .lock files)."""
    return sorted(p.name for p in dest.parent.iterdir() if p != dest)


# --------------------------------------------------------------------------------------------------------------------
# Helpers and paths


def test_errors_share_the_project_base_class():
    assert issubclass(OfflineError, DownloadError)
    assert issubclass(ChecksumError, DownloadError)
    assert issubclass(DownloadError, ResShiftError)


def test_sha256_of_streams_the_whole_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(BODY)
    assert sha256_of(path, chunk_size=1000) == BODY_SHA


def test_default_cache_dir_prefers_resshift_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RESSHIFT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"


def test_default_cache_dir_uses_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("RESSHIFT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "resshift"


def test_default_cache_dir_falls_back_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("RESSHIFT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))  # what Path.home() reads on Windows
    assert default_cache_dir() == tmp_path / ".cache" / "resshift"


# --------------------------------------------------------------------------------------------------------------------
# Downloads


def test_download_checks_sha_and_leaves_only_the_file(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "sub" / "w.pth"  # The directory does not exist yet.
    seen = []

    result = download_file(
        server.url("/w.pth"),
        dest,
        expected_size=len(BODY),
        expected_sha256=BODY_SHA.upper(),  # Case must not matter.
        chunk_size=CHUNK,
        progress=lambda done, total: seen.append((done, total)),
    )

    assert result == dest
    assert dest.read_bytes() == BODY
    assert leftovers(dest) == []
    assert seen[-1] == (len(BODY), len(BODY))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_resume_after_a_cut_connection_uses_range(server, tmp_path):
    cut_at = 50_000

    def route(handler, n):
        send_body(handler, BODY, cut_after=cut_at if n == 0 else None)

    server.routes["/w.pth"] = route
    dest = tmp_path / "w.pth"

    download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, chunk_size=CHUNK, progress=False)

    requests = server.requests_to("/w.pth")
    assert len(requests) == 2
    assert "range" not in requests[0]
    assert requests[1]["range"] == f"bytes={cut_at}-"
    assert dest.read_bytes() == BODY
    assert leftovers(dest) == []


def test_rerunning_after_giving_up_resumes_the_part_file(server, tmp_path):
    cut_at = 70_000

    def route(handler, n):
        send_body(handler, BODY, cut_after=cut_at if n == 0 else None)

    server.routes["/w.pth"] = route
    dest = tmp_path / "w.pth"
    url = server.url("/w.pth")

    with pytest.raises(DownloadError) as excinfo:
        download_file(url, dest, expected_sha256=BODY_SHA, chunk_size=CHUNK, max_retries=0, progress=False)
    message = str(excinfo.value)
    assert url in message and "again" in message
    assert not dest.exists()
    assert (tmp_path / "w.pth.part").stat().st_size == cut_at

    download_file(url, dest, expected_sha256=BODY_SHA, chunk_size=CHUNK, progress=False)
    assert server.requests_to("/w.pth")[1]["range"] == f"bytes={cut_at}-"
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY, honour_range=False)
    dest = tmp_path / "w.pth"
    # A leftover from an earlier run whose bytes would corrupt the file if the full answer were appended to them.
    (tmp_path / "w.pth.part").write_bytes(b"X" * 1234)

    download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, chunk_size=CHUNK, progress=False)

    assert server.requests_to("/w.pth")[0]["range"] == "bytes=1234-"
    assert dest.read_bytes() == BODY
    assert leftovers(dest) == []


def test_complete_part_file_answered_with_416_is_used(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.part").write_bytes(BODY)  # Every byte arrived, but the run stopped before the rename.

    download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, progress=False)

    assert [r["range"] for r in server.requests_to("/w.pth")] == [f"bytes={len(BODY)}-"]
    assert dest.read_bytes() == BODY


def test_part_file_larger_than_remote_file_restarts(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.part").write_bytes(b"Y" * (len(BODY) + 10))

    download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, progress=False)

    requests = server.requests_to("/w.pth")
    assert len(requests) == 2 and "range" not in requests[1]
    assert dest.read_bytes() == BODY


def test_corrupted_body_raises_checksum_error_and_keeps_nothing(server, tmp_path):
    corrupted = bytearray(BODY)
    corrupted[100_000] ^= 0xFF
    server.routes["/w.pth"] = lambda h, n: send_body(h, bytes(corrupted))
    dest = tmp_path / "w.pth"

    with pytest.raises(ChecksumError) as excinfo:
        download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, chunk_size=CHUNK, progress=False)

    message = str(excinfo.value)
    actual_sha = hashlib.sha256(bytes(corrupted)).hexdigest()
    assert "w.pth" in message and BODY_SHA in message and actual_sha in message
    assert (excinfo.value.expected, excinfo.value.actual) == (BODY_SHA, actual_sha)
    assert not dest.exists()
    assert leftovers(dest) == []


def test_wrong_size_raises_checksum_error(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "w.pth"

    with pytest.raises(ChecksumError, match=rf"{len(BODY)} bytes, expected {len(BODY) - 1} bytes"):
        download_file(server.url("/w.pth"), dest, expected_size=len(BODY) - 1, progress=False)
    assert not dest.exists()
    assert leftovers(dest) == []


def test_http_404_raises_offline_error_with_url_and_destination(server, tmp_path):
    dest = tmp_path / "weights" / "missing.pth"
    url = server.url("/missing.pth")
    page = "https://example.invalid/releases/v1"

    with pytest.raises(OfflineError) as excinfo:
        download_file(url, dest, source_page=page, expected_sha256=BODY_SHA, progress=False)

    message = str(excinfo.value)
    assert "404" in message
    assert url in message and str(dest) in message and page in message and BODY_SHA in message
    assert excinfo.value.url == url and excinfo.value.path == dest
    assert len(server.requests) == 1  # A missing file is not retried.
    assert not dest.exists()


def test_unreachable_host_raises_offline_error(tmp_path):
    with socket.socket() as probe:  # Find a loopback port where nothing listens.
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.pth"
    dest = tmp_path / "w.pth"

    with pytest.raises(OfflineError) as excinfo:
        download_file(url, dest, timeout=2.0, progress=False)

    assert url in str(excinfo.value) and str(dest) in str(excinfo.value)
    assert not dest.exists()


def test_transient_503_is_retried(server, tmp_path):
    def route(handler, n):
        if n == 0:
            handler.send_error(503)
        else:
            send_body(handler, BODY)

    server.routes["/w.pth"] = route
    dest = tmp_path / "w.pth"

    download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, progress=False)

    assert len(server.requests_to("/w.pth")) == 2
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize("stall_point", ["before-headers", "mid-body"])
def test_stalled_server_raises_download_error_quickly(server, tmp_path, stall_point):
    def route(handler, n):
        if stall_point == "mid-body":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(BODY)))
            handler.end_headers()
            handler.wfile.write(BODY[:1000])
            handler.wfile.flush()
        server.release.wait(10)  # Far longer than the client's timeout; freed at teardown.
        handler.close_connection = True

    server.routes["/w.pth"] = route
    dest = tmp_path / "w.pth"
    url = server.url("/w.pth")

    started = time.monotonic()
    with pytest.raises(DownloadError) as excinfo:
        download_file(url, dest, timeout=0.5, max_retries=1, progress=False)
    elapsed = time.monotonic() - started

    message = str(excinfo.value)
    assert not isinstance(excinfo.value, OfflineError)
    assert "stopped answering" in message and url in message and "resume" in message
    assert elapsed < 5.0
    assert len(server.requests_to("/w.pth")) == 2  # One try plus one retry.
    assert not dest.exists()


def test_offline_mode_never_contacts_the_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RESSHIFT_OFFLINE", "1")
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "w.pth"
    url = server.url("/w.pth")

    with pytest.raises(OfflineError) as excinfo:
        download_file(url, dest, source_page="https://example.invalid/releases", progress=False)

    message = str(excinfo.value)
    assert "RESSHIFT_OFFLINE" in message and url in message and str(dest) in message
    assert "https://example.invalid/releases" in message
    assert server.requests == []
    assert not dest.exists()


def test_offline_mode_still_returns_a_present_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RESSHIFT_OFFLINE", "1")
    dest = tmp_path / "w.pth"
    dest.write_bytes(BODY)

    assert download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, progress=False) == dest
    assert server.requests == []


def test_existing_good_file_is_returned_without_a_request(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, b"something else")
    dest = tmp_path / "w.pth"
    dest.write_bytes(BODY)

    result = download_file(server.url("/w.pth"), dest, expected_size=len(BODY), expected_sha256=BODY_SHA)

    assert result == dest
    assert server.requests == []
    assert dest.read_bytes() == BODY


def test_existing_bad_file_is_replaced(server, tmp_path, caplog):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"an old, different file")

    with caplog.at_level(logging.WARNING, logger="resshift_core.download"):
        download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, progress=False)

    assert dest.read_bytes() == BODY
    assert len(server.requests) == 1
    assert any("will be replaced" in record.getMessage() for record in caplog.records)


def test_concurrent_downloads_fetch_the_file_once(server, tmp_path):
    def slow_route(handler, n):
        time.sleep(0.3)  # Long enough for the second caller to reach the lock while the first downloads.
        send_body(handler, BODY)

    server.routes["/w.pth"] = slow_route
    dest = tmp_path / "w.pth"
    start_together = threading.Barrier(2)
    results, errors = [], []

    def worker():
        start_together.wait()
        try:
            results.append(download_file(server.url("/w.pth"), dest, expected_sha256=BODY_SHA, progress=False))
        except BaseException as exc:  # Reported by the assertions below.
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []
    assert results == [dest, dest]
    assert len(server.requests_to("/w.pth")) == 1
    assert dest.read_bytes() == BODY
    assert leftovers(dest) == []


def test_lock_held_too_long_raises_download_error(server, tmp_path):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)
    dest = tmp_path / "w.pth"
    lock_path = tmp_path / "w.pth.lock"

    with download._FileLock(lock_path, timeout=1.0), pytest.raises(DownloadError, match="lock file") as excinfo:
        download_file(server.url("/w.pth"), dest, lock_timeout=0.2, progress=False)

    assert str(lock_path) in str(excinfo.value)
    assert server.requests == []
    assert not lock_path.exists()  # Released and removed on exit.


def test_progress_true_draws_a_bar_on_stderr(server, tmp_path, capsys):
    pytest.importorskip("tqdm")
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)

    download_file(server.url("/w.pth"), tmp_path / "w.pth", chunk_size=CHUNK, progress=True)

    captured = capsys.readouterr()
    assert "w.pth" in captured.err and "100%" in captured.err
    assert captured.out == ""


def test_progress_false_prints_nothing(server, tmp_path, capsys):
    server.routes["/w.pth"] = lambda h, n: send_body(h, BODY)

    download_file(server.url("/w.pth"), tmp_path / "w.pth", progress=False)

    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")
