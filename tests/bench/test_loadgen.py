"""The load generator pauses its garbage collector while it measures (a
collection stalls its event loop, and the answers held up would be charged to
the server), and restores it after: against a tiny HTTP server in the same
process that notes, per request, whether the collector was enabled."""

from __future__ import annotations

import asyncio
import gc

from bench import loadgen


async def _serve(seen: list[bool]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                seen.append(gc.isenabled())
                body = b'{"query_id":1,"output":0,"default":false}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_the_collector_is_paused_while_a_run_measures_and_restored_after() -> None:
    async def main() -> tuple[list[bool], int, int]:
        seen: list[bool] = []
        server = await _serve(seen)
        port = server.sockets[0].getsockname()[1]
        pool = loadgen.Pool("127.0.0.1", port)
        work = loadgen.Workload.predict("127.0.0.1", port, "app", [[1.0, 2.0]])
        try:
            opened = await loadgen.run_open(pool, work, 200.0, 0.3, connections=4)
            enabled_between = gc.isenabled()
            closed = await loadgen.run_closed(pool, work, 2, 0.2)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()
        assert enabled_between
        return seen, opened.completed, closed.completed

    assert gc.isenabled()
    seen, opened, closed = asyncio.run(main())
    assert opened > 10 and closed > 10
    assert len(seen) >= opened + closed
    assert not any(seen)  # never enabled while a request was served
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with loadgen.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with loadgen.gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
