#!/usr/bin/env python3
"""usage: scripts/relay.py LISTEN_PORT TARGET_PORT

A TCP relay on 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT, put in an edge site's leaf
link to cut it and restore it as a failing WAN link would. SIGUSR1 cuts: every connection
through it is closed and new ones are refused. SIGUSR2 restores. SIGTERM stops it.
Used by scripts/bench --sites and scripts/chaos --sites.
"""
import asyncio
import signal
import sys


class Relay:
    def __init__(self, target):
        self.target = target
        self.cut = False
        self.links = set()

    async def serve(self, reader, writer):
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self.links.add(pair)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # stopping
        finally:
            self.links.discard(pair)

    def cut_now(self):
        self.cut = True
        for down, up in list(self.links):
            for w in (down, up):
                transport = w.transport
                if transport is not None:
                    transport.abort()
        self.links.clear()

    def restore(self):
        self.cut = False


async def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    relay = Relay(target)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, relay.cut_now)
    loop.add_signal_handler(signal.SIGUSR2, relay.restore)
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    server = await asyncio.start_server(relay.serve, "127.0.0.1", listen)
    async with server:
        await stop


if __name__ == "__main__":
    asyncio.run(main())
