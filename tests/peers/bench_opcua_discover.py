"""What a user would write instead of dowser to find OPC UA servers: asyncua's FindServers on
a discovery URL, then GetEndpoints on every server found, with the same concurrency as
dowser's default (8). Prints the number of servers described and the seconds.

Usage: bench_opcua_discover.py opc.tcp://127.0.0.1:4840/
"""

import asyncio
import sys
import time

from asyncua import Client, ua


async def endpoints(url: str, gate: asyncio.Semaphore) -> int:
    async with gate:
        try:
            found = await Client(url, timeout=2).connect_and_get_server_endpoints()
        except Exception:  # noqa: BLE001 - a server that fails is not found
            return 0
        return 1 if found else 0


async def main() -> None:
    started = time.perf_counter()
    servers = await Client(sys.argv[1], timeout=2).connect_and_find_servers()
    urls = [
        s.DiscoveryUrls[0]
        for s in servers
        if s.ApplicationType in (ua.ApplicationType.Server, ua.ApplicationType.ClientAndServer)
        and s.DiscoveryUrls
    ]
    gate = asyncio.Semaphore(8)
    counts = await asyncio.gather(*(endpoints(u, gate) for u in urls))
    print(sum(counts), f"{time.perf_counter() - started:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
