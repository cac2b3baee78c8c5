"""Model artifacts of any size: ``POST /admin/upload_artifact``, written to disk as they arrive.

An upload is a raw body (``application/octet-stream``) with its SHA-256 in
``X-Clipper-Artifact-SHA256``. It is written under ``<state>/uploads/`` as it
arrives (the HTTP server hands it over in chunks: never whole in memory),
hashed on the way, and moved into place as ``uploads/<sha256>`` only when the
digest matches. ``add_model`` then names it (``"artifact": "<sha256>"``): the
file is linked into the model's folder (no copy on the same disk).

Bounds: ``max_bytes`` (413, from ``Content-Length`` before the body is read),
free disk (507 when the declared size would leave less than ``RESERVE_BYTES``
free, and while writing), a minimum rate (408: the HTTP server's ``Stream``).
An upload no ``add_model`` used is removed after ``TTL_S``; partial files
(a client that left, a server that stopped) at the next sweep or start.
Concurrent uploads of one digest are harmless: each writes its own partial
file, and the same bytes replace the same name.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

from ..exceptions import ValidationError

log = logging.getLogger("clipper.management")

SHA256 = re.compile(r"[0-9a-f]{64}")
PARTIAL_PREFIX = ".upload-"
PARTIAL_SUFFIX = ".part"
RESERVE_BYTES = 256 * 1024 * 1024  # free disk an upload must leave
TTL_S = 3600.0  # an upload no add_model used is removed after this
SWEEP_EVERY_S = 60.0
WRITE_BYTES = 1024 * 1024  # bytes gathered before one write (in a thread)
SPACE_CHECK_BYTES = 64 * 1024 * 1024  # free disk is checked again after this many
MIN_RATE = 64 * 1024  # bytes a second, at least, over RATE_WINDOW_S
RATE_WINDOW_S = 10.0


class UploadError(Exception):
    """An upload refused: the HTTP status, a short error and its cause."""

    def __init__(self, status: int, error: str, cause: str) -> None:
        super().__init__(cause)
        self.status, self.error, self.cause = status, error, cause


def parse_digest(raw: str | bytes | None, what: str = "X-Clipper-Artifact-SHA256") -> str:
    """A SHA-256 hex digest (64 hex digits, either case), lower-cased, or ValidationError."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if text is None:
        raise ValidationError(f"{what} is missing: give the artifact's SHA-256 (hex)")
    text = text.strip().lower()
    if not SHA256.fullmatch(text):
        raise ValidationError(f"{what} must be a SHA-256 digest: 64 hexadecimal digits")
    return text


class ArtifactUploads:
    """The ``uploads`` folder: receive, look up and clean up uploaded artifacts."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 8 * 1024**3,
        reserve_bytes: int = RESERVE_BYTES,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self._active: set[Path] = set()  # partial files being written now
        self._swept_at = float("-inf")

    def prepare(self) -> None:
        """At start: the folder (owner-only), without what earlier runs left unused."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sweep(everything_partial=True)

    # -- receiving -----------------------------------------------------------------

    def free_bytes(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return shutil.disk_usage(self.directory).free

    def check_space(self, declared: int | None) -> None:
        """UploadError(507) when ``declared`` bytes would leave too little disk free."""
        if declared is None:
            return
        free = self.free_bytes()
        if declared + self.reserve_bytes > free:
            raise UploadError(
                507,
                "insufficient storage",
                f"an artifact of {declared} bytes does not fit: {free} bytes free on the "
                f"server's disk, of which {self.reserve_bytes} stay free",
            )

    async def receive(self, body: AsyncIterator[bytes], digest: str) -> tuple[str, int]:
        """Write ``body`` to a partial file as it arrives, check its digest, move it
        into place as ``<digest>``; ``(digest, bytes)``. UploadError on a digest
        mismatch (400) or a full disk (507); nothing is left behind on any failure."""
        self.sweep_if_due()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(
            dir=self.directory, prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX
        )
        partial = Path(name)
        self._active.add(partial)
        hasher = hashlib.sha256()
        size = 0
        checked = 0
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                gathered: list[bytes] = []
                waiting = 0
                async for chunk in body:
                    gathered.append(chunk)
                    waiting += len(chunk)
                    if waiting >= WRITE_BYTES:
                        await self._write(f, hasher, gathered)
                        size += waiting
                        gathered, waiting = [], 0
                        if size - checked >= SPACE_CHECK_BYTES:
                            checked = size
                            self._check_free(size)
                if gathered:
                    await self._write(f, hasher, gathered)
                    size += waiting
            actual = hasher.hexdigest()
            if actual != digest:
                raise UploadError(
                    400,
                    "digest mismatch",
                    f"the artifact's SHA-256 is {actual}, not {digest} as "
                    "X-Clipper-Artifact-SHA256 said: the upload is discarded",
                )
            os.replace(partial, self.directory / digest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            self._active.discard(partial)
        log.info("artifact %s uploaded (%d bytes)", digest, size)
        return digest, size

    async def _write(self, f: IO[bytes], hasher: Any, chunks: list[bytes]) -> None:
        """Hash and write in a thread (both release the GIL): the event loop serves on."""
        try:
            await asyncio.to_thread(_write_all, f, hasher, chunks)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise UploadError(
                    507, "insufficient storage", f"the server's disk is full: {exc.strerror}"
                ) from None
            raise

    def _check_free(self, written: int) -> None:
        free = self.free_bytes()
        if free < self.reserve_bytes:
            raise UploadError(
                507,
                "insufficient storage",
                f"the server's disk is nearly full after {written} bytes "
                f"({free} bytes free, {self.reserve_bytes} must stay free)",
            )

    # -- using ---------------------------------------------------------------------

    def path_of(self, digest: object) -> Path:
        """The uploaded artifact ``digest`` names (its use keeps it another TTL), or
        ValidationError when it is not (or no longer) there."""
        if not isinstance(digest, str):
            raise ValidationError("add_model: artifact must be a SHA-256 digest (a string)")
        digest = parse_digest(digest, "add_model: artifact")
        path = self.directory / digest
        try:
            os.utime(path)
        except FileNotFoundError:
            raise ValidationError(
                f"add_model: no uploaded artifact {digest} (never uploaded, or unused for "
                f"{self.ttl_s:g} s and removed): upload it with /admin/upload_artifact first"
            ) from None
        return path

    # -- cleaning up ----------------------------------------------------------------

    def sweep_if_due(self) -> None:
        now = self.clock()
        if now - self._swept_at >= SWEEP_EVERY_S:
            self.sweep()

    def sweep(self, everything_partial: bool = False) -> None:
        """Remove uploads unused for ``ttl_s``, and partial files no upload writes now
        (older than ``RATE_WINDOW_S`` · 6, or all of them at start)."""
        now = self.clock()
        self._swept_at = now
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(PARTIAL_PREFIX):
                stale = everything_partial or age > 6 * RATE_WINDOW_S
                if path in self._active or not stale:
                    continue
            elif not (SHA256.fullmatch(entry.name) and age > self.ttl_s):
                continue
            log.info("removing unused upload %s", entry.name)
            path.unlink(missing_ok=True)


def _write_all(f: IO[bytes], hasher: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)
        view = memoryview(chunk)
        while view:  # an unbuffered file may write less than asked
            written = f.write(view)
            view = view[written or 0 :]


def link_or_copy(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target``: a hard link (no copy, the same disk), or
    else a streamed copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
