"""``POST /admin/upload_artifact`` in process: the HTTP server's streamed bodies and the
upload route's checks (token, digest, size, disk, rate), on a real socket.

The end-to-end tests (a 1 GB artifact, a 31 MB model) are in
``tests/e2e/test_artifact_upload.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import orjson
import pytest

from clipper.http.server import Body, HTTPServer
from clipper.management import uploads as uploads_module
from clipper.management.api import ManagementFrontend
from clipper.management.service import ManagementService
from clipper.store.catalog import Catalog
from clipper.store.memory import MemoryStore
from tests.management.test_service_checks import FakeManager

TOKEN = "t0ken-for-the-upload-tests"
ROUTE = "/admin/upload_artifact"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return sync


@pytest.fixture
def service(tmp_path: Path) -> ManagementService:
    store = MemoryStore()
    return ManagementService(
        store, Catalog(store), FakeManager(), tmp_path / "state", max_artifact_bytes=64 << 20
    )


@asynccontextmanager
async def serving(service: ManagementService, **options: Any) -> AsyncIterator[HTTPServer]:
    frontend = ManagementFrontend(service, lambda: {"replicas": []}, admin_token=TOKEN)
    service.uploads.prepare()
    server = HTTPServer(
        frontend.handle,
        max_body_bytes=1 << 20,
        stream=frontend.stream,
        name="management",
        **options,
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(timeout_s=1)


def head(
    size: int | None,
    digest: str,
    *,
    token: str | None = TOKEN,
    extra: str = "",
    ctype: str = "application/octet-stream",
) -> bytes:
    lines = [f"POST {ROUTE} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {ctype}"]
    lines.append(f"X-Clipper-Artifact-SHA256: {digest}")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {size}" if size is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, orjson.loads(body)


def leftovers(service: ManagementService) -> list[str]:
    return sorted(os.listdir(service.uploads.directory))


@run
async def test_an_artifact_streams_to_disk_and_add_model_names_it(service):
    data = cloudpickle.dumps(lambda xs: [str(len(x)) for x in xs])  # add_model loads it
    digest = hashlib.sha256(data).hexdigest()
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(len(data), digest.upper()))  # either case
        for i in range(0, len(data), 7):  # in small pieces
            writer.write(data[i : i + 7])
        await writer.drain()
        status, headers, body = await answer(reader)
        assert status == 200, body
        assert body == {"artifact": digest, "bytes": len(data)}
        assert "connection" not in headers  # the connection goes on: keep-alive
        writer.close()
    assert leftovers(service) == [digest]
    await service.add_model("m", "1", "doubles", artifact=digest)
    stored = Path(service.store.get_model("m", "1").model_data_path)
    assert stored.read_bytes() == data and stored.name == "model.pkl"
    # The same artifact again, with exist_ok: identical (compared by digest).
    await service.add_model("m", "1", "doubles", artifact=digest, exist_ok=True)
    with pytest.raises(Exception, match="not both"):
        await service.add_model("m", "2", "doubles", artifact=digest, model_data=data)
    with pytest.raises(Exception, match="no uploaded artifact"):
        await service.add_model("m", "2", "doubles", artifact="0" * 64)
    with pytest.raises(Exception, match="64 hexadecimal"):
        await service.add_model("m", "2", "doubles", artifact="../../etc/passwd")


@run
async def test_a_chunked_upload_of_many_chunks_is_written_as_it_arrives(service):
    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(None, digest))
        for i in range(0, len(data), 65536):
            piece = data[i : i + 65536]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status, _, body = await answer(reader)
        assert (status, body["bytes"]) == (200, len(data))
        writer.close()
    assert (service.uploads.directory / digest).read_bytes() == data


@run
async def test_a_digest_mismatch_is_400_and_leaves_no_file(service):
    data = os.urandom(2 << 20)
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(len(data), "ab" * 32) + data)
        status, _, body = await answer(reader)
        assert status == 400 and body["error"] == "digest mismatch"
        assert hashlib.sha256(data).hexdigest() in body["cause"]
        writer.close()
    assert leftovers(service) == []


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"token": None}, 401),
        ({"token": "wrong"}, 401),
        ({"size": (64 << 20) + 1}, 413),
        ({"digest": "not-a-digest"}, 400),
        ({"ctype": "application/json"}, 415),
    ],
)
@run
async def test_a_refusal_comes_from_the_head_before_the_body_is_sent(service, kwargs, status):
    size = kwargs.pop("size", 1 << 20)
    digest = kwargs.pop("digest", "ab" * 32)
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(size, digest, **kwargs))  # the head only: no byte of the body
        got, headers, body = await answer(reader)
        assert got == status, body
        assert headers["connection"] == "close"
        if status == 401:
            assert headers["www-authenticate"].startswith("Bearer")
        # The server half-closes: an end of file after the answer, nothing more.
        assert await reader.read() == b""
        writer.close()
    assert leftovers(service) == []


@run
async def test_a_refused_body_already_on_its_way_still_gets_its_answer(service):
    # A client that sends the body without waiting (most do) reads the answer, not
    # a reset: the server drops what arrives for a moment before it closes.
    data = os.urandom(2 << 20)
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(len(data), "ab" * 32, token="wrong") + data)
        with contextlib.suppress(ConnectionError):  # its writes may fail: the answer stays
            await writer.drain()
        status, _, _ = await answer(reader)
        assert status == 401
        writer.close()


@run
async def test_a_disk_too_full_for_the_declared_size_is_507_before_the_body(service):
    service.uploads.reserve_bytes = service.uploads.free_bytes()  # nothing may be written
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(1 << 20, "ab" * 32))
        status, _, body = await answer(reader)
        assert status == 507 and "free" in body["cause"]
        writer.close()


@run
async def test_a_chunked_body_past_the_limit_is_413_and_leaves_no_file(service):
    service.uploads.max_bytes = 1 << 20
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(None, "ab" * 32))
        piece = b"x" * 65536
        for _ in range(20):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, _, body = await answer(reader)
        assert status == 413, body
        writer.close()
    await asyncio.sleep(0.1)
    assert leftovers(service) == []


@run
async def test_a_slow_client_is_cut_off_with_408(service):
    clock = FakeClock()
    async with serving(service, clock=clock) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(1 << 20, "ab" * 32) + b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(0.2)
        window = uploads_module.RATE_WINDOW_S
        clock.now += window / 2
        server.sweep(clock.now)  # half a window: not judged yet
        await asyncio.sleep(0.1)
        assert not reader.at_eof()
        clock.now += window / 2
        server.sweep(clock.now)  # 1000 bytes in a window: far under 64 KiB/s
        status, _, body = await answer(reader)
        assert status == 408 and "bytes/s" in body["cause"]
        writer.close()
    await asyncio.sleep(0.1)
    assert leftovers(service) == []


@run
async def test_a_fast_client_is_judged_window_by_window_and_passes(service):
    clock = FakeClock()
    data = os.urandom(4 << 20)
    digest = hashlib.sha256(data).hexdigest()
    window = uploads_module.RATE_WINDOW_S
    async with serving(service, clock=clock) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(len(data), digest))
        per_window = len(data) // 4  # 1 MiB per 10 s: over 64 KiB/s
        for i in range(4):
            writer.write(data[i * per_window : (i + 1) * per_window])
            await writer.drain()
            await asyncio.sleep(0.1)
            clock.now += window
            server.sweep(clock.now)
        status, _, body = await answer(reader)
        assert status == 200, body
        writer.close()


@run
async def test_a_body_is_never_held_whole_the_client_waits_for_the_handler():
    # A handler that does not read: the server reads at most HIGH_WATER (and a
    # socket's worth) and then stops reading the client.
    from clipper.http.server import Response, Stream

    bodies: list[Body] = []
    release = asyncio.Event()

    async def slow(request: Any, body: Body) -> Response:
        bodies.append(body)
        await release.wait()
        size = 0
        async for chunk in body:
            size += len(chunk)
        return Response(200, b'{"bytes": %d}' % size)

    server = HTTPServer(
        lambda r: Response(404, b"{}"),
        max_body_bytes=1024,
        stream=lambda r: Stream(slow, max_bytes=1 << 30),
    )
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        total = 64 << 20
        writer.write(f"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n".encode())
        chunk = b"y" * (1 << 20)

        async def send() -> None:
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(send())
        await asyncio.sleep(1.0)
        assert bodies and bodies[0].received < Body.HIGH_WATER + (4 << 20)
        assert not sender.done()  # the client is held back
        release.set()
        await sender
        status, _, body = await answer(reader)
        assert status == 200 and body == {"bytes": total}
        writer.close()
    finally:
        await server.shutdown(timeout_s=1)


@run
async def test_the_json_routes_keep_their_small_body_limit(service):
    async with serving(service) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /admin/add_model HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % ((1 << 20) + 1)
        )
        status, _, _ = await answer(reader)
        assert status == 413
        writer.close()


def test_unused_uploads_and_partial_files_are_swept(tmp_path: Path):
    now = [10_000.0]
    up = uploads_module.ArtifactUploads(tmp_path / "u", ttl_s=100, clock=lambda: now[0])
    up.directory.mkdir()
    fresh, stale = "a" * 64, "b" * 64
    for name in (fresh, stale, ".upload-x.part", "notes.txt"):
        (up.directory / name).write_bytes(b"1")
    os.utime(up.directory / stale, (now[0] - 200, now[0] - 200))
    os.utime(up.directory / fresh, (now[0] - 50, now[0] - 50))
    up.prepare()  # at start: every partial file, and uploads past their TTL
    assert sorted(os.listdir(up.directory)) == [fresh, "notes.txt"]
    now[0] += 60
    up.path_of(fresh)  # used: its TTL starts again
    now[0] += 60
    up.sweep()
    assert sorted(os.listdir(up.directory)) == [fresh, "notes.txt"]


# -- the client: deploy_model streams large artifacts, and falls back for old servers ----


@contextlib.contextmanager
def server_thread(service: ManagementService, *, old: bool = False) -> Any:
    """The management port in a thread (the client under test blocks); ``old``: as a
    server from before the upload route (no stream hook, 404 for the route)."""
    import threading

    from clipper.admin import ClipperConnection, LocalContainerManager
    from clipper.http.server import json_error

    frontend = ManagementFrontend(service, lambda: {"replicas": []}, admin_token=TOKEN)

    def handle(request: Any) -> Any:
        if old and request.path.startswith(ROUTE):
            return json_error(request.path, 404, "unknown admin route", "no route")
        return frontend.handle(request)

    loop = asyncio.new_event_loop()
    server = HTTPServer(
        handle, max_body_bytes=4 << 20, stream=None if old else frontend.stream, name="m"
    )
    loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cm = LocalContainerManager(
        clipper_management_port=server.port, admin_token=TOKEN, state_dir=str(service.state_dir)
    )
    conn = ClipperConnection(cm)
    conn.connect()
    try:
        yield conn
    finally:
        conn.close()
        asyncio.run_coroutine_threadsafe(server.shutdown(timeout_s=1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def big_model() -> bytes:
    weights = os.urandom(2 << 20)  # 2 MiB: over the client's UPLOAD_THRESHOLD
    return cloudpickle.dumps(lambda xs, w=weights: [str(len(w))] * len(xs))


def test_deploy_model_streams_a_large_artifact_and_names_it(service, caplog):
    data = big_model()
    with server_thread(service) as conn:
        conn.deploy_model("big", "1", "doubles", data, wait=False, progress=False)
        path = Path(service.store.get_model("big", "1").model_data_path)
        assert path.read_bytes() == data
        assert (service.uploads.directory / hashlib.sha256(data).hexdigest()).is_file()
        # From a file, too (read in chunks), with the progress bar on.
        source = service.state_dir / "artifact.pkl"
        source.write_bytes(data)
        conn.deploy_model("big", "2", "doubles", source, wait=False, progress=True)
        assert Path(service.store.get_model("big", "2").model_data_path).read_bytes() == data


def test_deploy_model_sends_small_artifacts_inline(service):
    data = cloudpickle.dumps(lambda xs: ["small"] * len(xs))
    with server_thread(service) as conn:
        conn.deploy_model("small", "1", "doubles", data, wait=False)
    assert not service.uploads.directory.exists()  # no upload was made


def test_deploy_model_falls_back_inline_against_an_old_server(service, caplog):
    data = big_model()
    with server_thread(service, old=True) as conn:
        conn.deploy_model("big", "1", "doubles", data, wait=False, progress=False)
        assert Path(service.store.get_model("big", "1").model_data_path).read_bytes() == data
        assert "no /admin/upload_artifact" in caplog.text
        # Past the old server's body limit: an error that says why, and what to do.
        huge = cloudpickle.dumps(os.urandom(1 << 20) * 5)  # 5 MiB, over its 4 MiB limit
        from clipper.admin import ClipperException

        with pytest.raises(ClipperException, match="predates streamed artifact uploads"):
            conn.deploy_model("big", "2", "doubles", huge, wait=False, progress=False)


@run
async def test_the_host_and_origin_guard_refuses_an_upload_from_its_head(service):
    frontend = ManagementFrontend(service, lambda: {"replicas": []}, admin_token=TOKEN)
    server = HTTPServer(
        frontend.handle,
        max_body_bytes=1 << 20,
        stream=frontend.stream,
        guard=lambda r: (403, "origin refused") if r.origin else None,
    )
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head(1 << 20, "ab" * 32, extra="Origin: http://evil.test\r\n"))
        status, headers, body = await answer(reader)
        assert status == 403 and body["cause"] == "origin refused"
        assert headers["connection"] == "close"
        writer.close()
    finally:
        await server.shutdown(timeout_s=1)
    assert leftovers(service) == []
