"""A tiny line-protocol daemon built on postward.core.service, used to test the shared life
cycle (SIGHUP reload, SIGTERM drain) in a real process.

Each request line is answered with the config's ``[dns] negative_ttl``; the line ``hold`` is
answered only once the file named by the ``release`` argument exists (work kept in flight).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from postward.core.logs import configure_logging, get_log
from postward.core.runtime import load_config_or_exit
from postward.core.service import InFlight, serve
from postward.schema import Config, load_config

log = get_log("line_service")


class LineService:
    def __init__(self, config: Config, port_file: Path, release: Path) -> None:
        self.config = config
        self.port_file = port_file
        self.release = release
        self.inflight = InFlight()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.port_file.write_text(str(port))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            async with self.inflight.track():
                if line.strip() == b"hold":
                    log.info("request_held")
                    while not self.release.exists():
                        await asyncio.sleep(0.02)
                writer.write(f"{self.config.dns.negative_ttl:g}\n".encode())
                await writer.drain()
        writer.close()

    async def close_listeners(self) -> None:
        assert self.server is not None
        self.server.close()

    async def reload(self, config: Config) -> None:
        self.config = config

    async def aclose(self) -> None:
        assert self.server is not None
        await self.server.wait_closed()


def main() -> int:
    config_path, port_file, release = (Path(a) for a in sys.argv[1:4])
    config = load_config_or_exit(config_path)
    configure_logging("test", config.logging.level)
    service = LineService(config, port_file, release)
    return asyncio.run(serve(service, service.inflight, lambda: load_config(config_path)))


if __name__ == "__main__":
    raise SystemExit(main())
