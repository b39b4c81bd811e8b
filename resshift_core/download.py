"""Fetch model weights into a local cache.

Downloads are resumable (an HTTP ``Range`` request continues a ``.part`` file), verified (size and SHA-256 when
known), atomic (the file appears at its destination only once verified), and locked (two processes never fetch the
same file at once). When a file cannot be fetched, the error says where it comes from and the exact path where the
user can put it by hand, so a machine without internet access can still be set up.

Besides the standard library, ``tqdm`` draws the progress bar in a terminal.

Environment variables:

``RESSHIFT_CACHE``
    Directory returned by :func:`default_cache_dir`.
``RESSHIFT_OFFLINE``
    When ``1`` (or ``true``/``yes``/``on``), :func:`download_file` never touches the network.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import pathlib
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from tqdm import tqdm as _tqdm

from .errors import ResShiftError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

try:
    import msvcrt
except ImportError:  # not Windows
    msvcrt = None

try:
    import ssl

    _SSL_ERRORS: tuple[type, ...] = (ssl.SSLError,)
except ImportError:  # pragma: no cover - Python built without ssl
    _SSL_ERRORS = ()

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "default_cache_dir",
    "download_file",
    "sha256_of",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "RESSHIFT_CACHE"
OFFLINE_ENV = "RESSHIFT_OFFLINE"

#: How long a second download of the same file waits for the first one, in seconds.
DEFAULT_LOCK_TIMEOUT = 30 * 60.0

ProgressCallback = Callable[[int, Optional[int]], None]

# Retry n (1-based) waits n times this many seconds, to give a flaky link time to recover. Tests set it to 0.
_RETRY_BACKOFF_S = 1.0
_LOCK_POLL_S = 0.05
_HASH_CHUNK = 1 << 20
_USER_AGENT = "resshift-core-downloader"
_TRUTHY = {"1", "true", "yes", "on"}
# Status codes worth another try: the server is busy or a proxy hiccuped, the file itself may well be there.
_RETRYABLE_HTTP_CODES = {408, 429, 500, 502, 503, 504}
# Errors that mean the transfer was interrupted, not that the file is unavailable: retried, resuming each time.
_INTERRUPTION_ERRORS: tuple[type, ...] = (
    http.client.HTTPException,  # IncompleteRead, and garbled answers such as BadStatusLine
    ConnectionError,
    TimeoutError,
    socket.timeout,
) + _SSL_ERRORS

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------------
# Errors


class DownloadError(ResShiftError):
    """A file could not be downloaded, or the download could not be completed.

    Attributes:
        url: The address the file was being fetched from, when known.
        path: The destination path of the file, when known.
    """

    def __init__(self, message: str, *, url: str | None = None, path: os.PathLike | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.path = pathlib.Path(path) if path is not None else None


class OfflineError(DownloadError):
    """The file is missing and cannot be fetched: offline mode, unreachable host, or an HTTP error such as 404.

    The message names the file, the URL (and release page when known), and the path where to put the file by hand.

    Attributes:
        files: every missing file of the request (:class:`~resshift_core.errors.NeededFile`), so that a user puts
            them all in place at once.
    """

    def __init__(self, message: str, *, url: str | None = None, path: os.PathLike | None = None,
                 files: tuple = ()) -> None:
        super().__init__(message, url=url, path=path)
        self.files = tuple(files)


class ChecksumError(DownloadError):
    """The downloaded file does not have the expected size or SHA-256; it has been deleted.

    Attributes:
        expected: The expected value (``"N bytes"`` or a hex SHA-256 digest).
        actual: The value the downloaded file had.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        path: os.PathLike | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message, url=url, path=path)
        self.expected = expected
        self.actual = actual


class _Unavailable(Exception):
    """Internal: the server refused the file or could not be reached; becomes an :class:`OfflineError`."""


class _RangeNotSatisfiable(Exception):
    """Internal: HTTP 416 to a resume request; ``total`` is the remote size when the server said it."""

    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.total = total


class _RestartFromZero(Exception):
    """Internal: the server's answer to a resume request cannot be appended to the ``.part`` file."""


class _RetryableHTTPError(Exception):
    """Internal: an HTTP status that may go away if asked again (503 and the like)."""


# --------------------------------------------------------------------------------------------------------------------
# Public helpers


def default_cache_dir() -> pathlib.Path:
    """Return the directory where downloaded weights are kept.

    ``$RESSHIFT_CACHE`` when set; otherwise ``$XDG_CACHE_HOME/resshift`` when ``XDG_CACHE_HOME`` is an absolute path
    (the XDG spec says relative values must be ignored); otherwise ``~/.cache/resshift``. The directory is not created.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    if xdg_cache and os.path.isabs(xdg_cache):
        return pathlib.Path(xdg_cache) / "resshift"
    return pathlib.Path.home() / ".cache" / "resshift"


def sha256_of(path: str | os.PathLike, chunk_size: int = _HASH_CHUNK) -> str:
    """Return the SHA-256 of the file at ``path`` as lowercase hex, reading it ``chunk_size`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool | ProgressCallback = True,
    chunk_size: int = 1 << 20,
    max_retries: int = 3,
    source_page: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> pathlib.Path:
    """Download ``url`` to ``dest`` unless a good copy is already there, and return ``dest`` as a path.

    Args:
        url: Address of the file (``http://`` or ``https://``; redirects are followed).
        dest: Where the file must end up. Its directory is created if needed. Bytes are first written to
            ``dest + ".part"`` and moved to ``dest`` only once verified, so ``dest`` never holds a partial file.
        expected_size: Size of the file in bytes, or ``None`` if unknown. Checked on an existing file and after the
            download.
        expected_sha256: Hex SHA-256 of the file (any case), or ``None`` if unknown. Checked like ``expected_size``.
        timeout: Seconds to wait for the server to connect or send more data before the attempt counts as stalled.
        progress: ``True`` draws a tqdm bar on stderr (when tqdm is installed), ``False`` shows nothing, and a
            callable is called as ``progress(done_bytes, total_bytes_or_None)`` as bytes arrive.
        chunk_size: Bytes read from the network per write to disk.
        max_retries: How many more attempts to make after a cut connection, a stall or a transient HTTP status
            (429, 5xx); each attempt resumes where the previous one stopped. ``0`` tries only once.
        source_page: A page where a person can find the file (e.g. the release page), quoted in error messages.
        lock_timeout: Seconds to wait for another process that is downloading the same file before giving up.

    Returns:
        ``dest`` as a :class:`pathlib.Path`.

    Raises:
        OfflineError: The file is missing and ``RESSHIFT_OFFLINE`` is set, the host cannot be reached, or the server
            answers with an HTTP error. The message says where to put the file by hand.
        ChecksumError: The downloaded file has the wrong size or SHA-256 (the ``.part`` file is deleted).
        DownloadError: The server stopped answering or kept cutting the connection (re-running resumes), or another
            process held the lock for longer than ``lock_timeout``.
        ValueError: An argument is out of range.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
    dest = pathlib.Path(dest)
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.strip().lower()
    job = _Job(url, dest, expected_size, expected_sha256, source_page)

    problem = job.problem_with_existing()
    if problem is None:
        logger.debug("%s is already present and valid", dest)
        return dest
    if _offline_mode():
        reason = f"{OFFLINE_ENV} is set, so it was not downloaded"
        if problem != "missing":
            reason = f"the file there is not the expected one ({problem}) and {reason}"
        raise OfflineError(job.unavailable_message(reason), url=url, path=dest)

    dest.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(job.lock_path, timeout=lock_timeout, what=dest.name):
        # Another process may have finished this very file while we waited for the lock.
        if job.problem_with_existing(quiet=True) is None:
            logger.info("%s was downloaded by another process", dest)
            return dest
        logger.info("Downloading %s from %s", dest.name, url)
        reporter = _ProgressReporter(progress, dest.name)
        try:
            _download_to_part(job, timeout=timeout, chunk_size=chunk_size, max_retries=max_retries, reporter=reporter)
        finally:
            reporter.close()
        _verify_part(job)
        os.replace(job.part_path, dest)
    logger.info("Saved %s", dest)
    return dest


# --------------------------------------------------------------------------------------------------------------------
# Implementation


class _Job:
    """What is being downloaded and where; builds the messages that point the user at the file."""

    def __init__(
        self,
        url: str,
        dest: pathlib.Path,
        expected_size: int | None,
        expected_sha256: str | None,
        source_page: str | None,
    ) -> None:
        self.url = url
        self.dest = dest
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.source_page = source_page
        self.part_path = dest.with_name(dest.name + ".part")
        self.lock_path = dest.with_name(dest.name + ".lock")

    def first_mismatch(self, path: pathlib.Path) -> tuple[str, str, str] | None:
        """Return ``(what, expected, actual)`` for the first check ``path`` fails, or ``None`` if it passes all."""
        actual_size = path.stat().st_size
        if self.expected_size is not None and actual_size != self.expected_size:
            return "size", f"{self.expected_size} bytes", f"{actual_size} bytes"
        if self.expected_sha256 is not None:
            actual_sha = sha256_of(path)
            if actual_sha != self.expected_sha256:
                return "SHA-256", self.expected_sha256, actual_sha
        return None

    def problem_with_existing(self, quiet: bool = False) -> str | None:
        """Return ``None`` if ``dest`` is present and valid, else a short description of what is wrong with it."""
        if not self.dest.is_file():
            return "missing"
        mismatch = self.first_mismatch(self.dest)
        if mismatch is None:
            return None
        what, expected, actual = mismatch
        problem = f"{what} is {actual}, expected {expected}"
        if not quiet:
            logger.warning("%s exists but its %s; it will be replaced", self.dest, problem)
        return problem

    def unavailable_message(self, reason: str) -> str:
        """Explain that the file could not be obtained, why, and how to put it in place by hand."""
        lines = [
            f"Could not download {self.dest.name}: {reason}.",
            f"  URL: {self.url}",
        ]
        if self.source_page:
            lines.append(f"  Also listed on: {self.source_page}")
        lines.append("To install it by hand, download the file and save it as:")
        lines.append(f"  {self.dest}")
        known = []
        if self.expected_size is not None:
            known.append(f"size {self.expected_size} bytes")
        if self.expected_sha256 is not None:
            known.append(f"SHA-256 {self.expected_sha256}")
        if known:
            lines.append(f"The file must have {', '.join(known)}.")
        return "\n".join(lines)


def _offline_mode() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUTHY


def _part_size(part: pathlib.Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _download_to_part(
    job: _Job, *, timeout: float, chunk_size: int, max_retries: int, reporter: _ProgressReporter
) -> None:
    """Make ``job.part_path`` hold the whole remote file, resuming and retrying as needed."""
    failures = 0
    while True:
        offset = _part_size(job.part_path)
        if job.expected_size is not None:
            if offset > job.expected_size:
                logger.warning("%s is larger than the expected file; starting again", job.part_path)
                job.part_path.unlink()
                offset = 0
            elif offset == job.expected_size and job.part_path.exists():
                return  # A previous run got every byte but stopped before verifying.
        try:
            _fetch_once(job, offset, timeout=timeout, chunk_size=chunk_size, reporter=reporter)
            return
        except _RangeNotSatisfiable as exc:
            if exc.total is not None and exc.total == offset:
                return  # The .part file already holds the whole file.
            logger.warning("The server cannot resume %s from byte %d; starting again", job.dest.name, offset)
            job.part_path.unlink()
        except _RestartFromZero as exc:
            logger.warning("Cannot resume %s (%s); starting again", job.dest.name, exc)
            job.part_path.unlink()
        except _Unavailable as exc:
            raise OfflineError(job.unavailable_message(str(exc)), url=job.url, path=job.dest) from exc
        except (_RetryableHTTPError,) + _INTERRUPTION_ERRORS as exc:
            failures += 1
            if failures > max_retries:
                raise _give_up_error(job, exc, attempts=failures, timeout=timeout) from exc
            logger.warning(
                "Download of %s interrupted (%s); retry %d of %d from byte %d",
                job.dest.name,
                _describe(exc, timeout),
                failures,
                max_retries,
                _part_size(job.part_path),
            )
            time.sleep(_RETRY_BACKOFF_S * failures)


def _fetch_once(job: _Job, offset: int, *, timeout: float, chunk_size: int, reporter: _ProgressReporter) -> None:
    """Make one HTTP request and append what it returns to the ``.part`` file (or rewrite it from zero).

    Raises one of the internal exceptions above, or an interruption error, when the file is not complete.
    """
    headers = {"User-Agent": _USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(job.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset > 0:
            match = _UNSATISFIED_RANGE.fullmatch((exc.headers.get("Content-Range") or "").strip())
            raise _RangeNotSatisfiable(int(match.group(1)) if match else None) from exc
        if exc.code in _RETRYABLE_HTTP_CODES:
            raise _RetryableHTTPError(f"HTTP {exc.code} {exc.reason}") from exc
        raise _Unavailable(f"the server answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        # urllib wraps connection-time failures; a timeout or reset there is an interruption, not a missing file.
        # A refused connection is not: nothing listens there, so trying again is pointless.
        if isinstance(exc.reason, _INTERRUPTION_ERRORS) and not isinstance(exc.reason, ConnectionRefusedError):
            raise exc.reason from exc
        raise _Unavailable(f"the server could not be reached ({exc.reason})") from exc

    with response:
        start, total = _where_body_starts(response, offset)
        done = start
        reporter.update(done, total)
        # "wb" also covers a server that ignored our Range header: its full body replaces the old bytes.
        with open(job.part_path, "ab" if start > 0 else "wb") as out:
            while True:
                chunk = response.read(chunk_size)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                reporter.update(done, total)
    # http.client returns b"" rather than raising when the server closes early, so compare with the announced size.
    if total is not None and done < total:
        raise http.client.IncompleteRead(b"", total - done)


def _where_body_starts(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Return ``(byte offset of the body in the file, total file size or None)`` for a successful response."""
    if offset > 0 and response.status == 206:
        match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
        if match is None or int(match.group(1)) != offset:
            raise _RestartFromZero(
                f"asked for bytes from {offset}, got Content-Range {response.headers.get('Content-Range')!r}"
            )
        total = match.group(3)
        return offset, (int(total) if total != "*" else None)
    if offset > 0:
        logger.info("The server ignored the resume request; downloading from the start")
    length = response.headers.get("Content-Length")
    return 0, (int(length) if length and length.strip().isdigit() else None)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no data for {timeout:g} s"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the end of the file"
    return str(exc) or type(exc).__name__


def _give_up_error(job: _Job, exc: BaseException, *, attempts: int, timeout: float) -> DownloadError:
    """Build the error raised once retries are spent; it says that running again resumes."""
    if isinstance(exc, _RetryableHTTPError):
        reason = f"the server kept answering {exc} ({attempts} attempts)"
        return OfflineError(job.unavailable_message(reason), url=job.url, path=job.dest)
    saved = _part_size(job.part_path)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        what = f"The server stopped answering (no data for {timeout:g} s)"
    else:
        what = f"The connection kept being cut ({_describe(exc, timeout)})"
    if saved:
        advice = f"Run the same command again to resume from the {saved} bytes already saved in {job.part_path}."
    else:
        advice = "Run the same command again to retry; a download cut later on resumes where it stopped."
    return DownloadError(
        f"{what} while downloading {job.dest.name} from {job.url}; gave up after {attempts} attempt(s).\n{advice}",
        url=job.url,
        path=job.dest,
    )


def _verify_part(job: _Job) -> None:
    """Check the finished ``.part`` file; delete it and raise :class:`ChecksumError` if it is not the expected file."""
    with open(job.part_path, "rb+") as stream:
        os.fsync(stream.fileno())  # The bytes must be on disk before the rename makes them the real file.
    mismatch = job.first_mismatch(job.part_path)
    if mismatch is None:
        return
    job.part_path.unlink()
    what, expected, actual = mismatch
    raise ChecksumError(
        f"The download of {job.dest.name} from {job.url} is corrupt: its {what} is {actual}, expected {expected}. "
        f"It was deleted; run again to download it anew, or save a good copy as {job.dest}.",
        url=job.url,
        path=job.dest,
        expected=expected,
        actual=actual,
    )


class _ProgressReporter:
    """Forwards progress to a user callback, or to a tqdm bar on stderr, or nowhere."""

    def __init__(self, progress: bool | ProgressCallback, label: str) -> None:
        self._callback = progress if callable(progress) else None
        self._draw_bar = self._callback is None and bool(progress)
        self._label = label
        self._bar = None

    def update(self, done: int, total: int | None) -> None:
        if self._callback is not None:
            self._callback(done, total)
            return
        if not self._draw_bar:
            return
        if self._bar is None:
            self._bar = _tqdm(
                total=total,
                initial=done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self._label,
                file=sys.stderr,
            )
            return
        if done < self._bar.n:  # Restarted from zero.
            self._bar.reset(total=total)
        elif total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _FileLock:
    """An exclusive lock on a side file, honoured across processes and across threads of one process.

    Uses ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows, and an ``O_EXCL`` lock file where neither works.
    The lock file is removed on release where that is safe.
    """

    def __init__(self, path: pathlib.Path, *, timeout: float, what: str = "this file") -> None:
        self.path = pathlib.Path(path)
        self.timeout = timeout
        self.what = what
        self._fd: int | None = None
        if fcntl is not None:
            self._method = "flock"
        elif msvcrt is not None:  # pragma: no cover - Windows
            self._method = "msvcrt"
        else:  # pragma: no cover
            self._method = "exclusive-create"

    def __enter__(self) -> _FileLock:
        deadline = time.monotonic() + self.timeout
        announced = False
        while not self._try_acquire():
            if time.monotonic() >= deadline:
                raise DownloadError(
                    f"Gave up after {self.timeout:g} s waiting for another download of {self.what} to finish "
                    f"(lock file: {self.path}). If no other download is running, delete the lock file and try again.",
                    path=self.path,
                )
            if not announced:
                logger.info("Waiting for another process to finish downloading %s", self.what)
                announced = True
            time.sleep(_LOCK_POLL_S)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _try_acquire(self) -> bool:
        if self._method == "flock":
            return self._try_flock()
        if self._method == "msvcrt":  # pragma: no cover - Windows
            return self._try_msvcrt()
        return self._try_exclusive_create()  # pragma: no cover

    def _try_flock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            # flock is unsupported on some network file systems; a lock file still works there.
            logger.debug("flock failed on %s (%s); using an exclusive lock file", self.path, exc)
            self._method = "exclusive-create"
            return self._try_exclusive_create()
        # The previous holder unlinks the file on release; if it did so after we opened it, our lock is on a
        # deleted file that no newcomer will see, so it protects nothing: start over.
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same_file = False
        if not same_file:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _try_msvcrt(self) -> bool:  # pragma: no cover - Windows
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _try_exclusive_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock if held; safe to call more than once."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._method == "flock":
            # Unlink while still holding the lock, so a waiter that then gets it notices the file is gone.
            _unlink_quietly(self.path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        elif self._method == "msvcrt":  # pragma: no cover - Windows
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            os.close(fd)
            # Fails harmlessly while another process has the file open, which is when removing it would be unsafe.
            _unlink_quietly(self.path)
        else:
            os.close(fd)
            _unlink_quietly(self.path)


def _unlink_quietly(path: pathlib.Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
