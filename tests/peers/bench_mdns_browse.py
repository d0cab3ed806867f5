"""What a user would run instead of dowser to notice mDNS services: a python-zeroconf
browser. Measures, like dowser's appear_latency example, the time from a python-zeroconf
responder's register call returning to the browser's "added" callback. Run inside a private
network namespace with loopback up (scripts/bench does). Prints the median in ms.

Usage: bench_mdns_browse.py [ROUNDS]
"""

import asyncio
import socket
import statistics
import sys
import time

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

TYPE = "_bench._tcp.local."


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    responder = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    browser_zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    seen: dict[str, float] = {}
    arrived = asyncio.Event()

    def on_change(zeroconf, service_type, name, state_change):  # noqa: ARG001
        if state_change is ServiceStateChange.Added:
            seen[name] = time.perf_counter()
            arrived.set()

    browser = AsyncServiceBrowser(browser_zc.zeroconf, TYPE, handlers=[on_change])
    await asyncio.sleep(1.5)
    latencies = []
    for i in range(rounds):
        name = f"peer {i}.{TYPE}"
        info = AsyncServiceInfo(
            TYPE, name, port=8000, server="bench-peer.local.",
            addresses=[socket.inet_aton("127.0.0.1")],
        )
        # Returns after probing; the announcements start right away (the same instant
        # tests/peers/zeroconf_responder.py reports to dowser's appear_latency example).
        announcing = await responder.async_register_service(info)
        registered = time.perf_counter()
        await announcing
        while name not in seen:
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 30)
        latencies.append((seen[name] - registered) * 1000)
        await asyncio.sleep(1.5)
    await browser.async_cancel()
    await responder.async_close()
    await browser_zc.async_close()
    print(f"{statistics.median(latencies):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
