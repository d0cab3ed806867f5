"""What a user would write instead of dowser to find BACnet devices: bacpypes3's Who-Is to
each address, then ReadProperty of the same seven Device object properties dowser reads,
with the same concurrency as dowser's default (8). Prints the number of devices described
and the seconds.

Usage: bench_bacnet_discover.py --address 127.0.0.1:47810 IP:PORT [IP:PORT ...]
"""

import argparse
import asyncio
import sys
import time

from bacpypes3.app import Application
from bacpypes3.argparse import SimpleArgumentParser
from bacpypes3.pdu import Address

PROPERTIES = [
    "object-name",
    "vendor-name",
    "model-name",
    "firmware-revision",
    "application-software-version",
    "location",
    "description",
]


async def describe(app, address: str, gate: asyncio.Semaphore) -> int:
    async with gate:
        i_ams = await app.who_is(address=Address(address), timeout=0.3)
        if not i_ams:
            return 0
        device = i_ams[0].iAmDeviceIdentifier
        for prop in PROPERTIES:
            try:
                await asyncio.wait_for(app.read_property(Address(address), device, prop), 2)
            except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
                raise
            except BaseException:  # noqa: BLE001 - bacpypes3 raises a device's Error this way
                pass
        return 1


async def main() -> None:
    parser = SimpleArgumentParser()
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()
    app = Application.from_args(args)
    started = time.perf_counter()
    gate = asyncio.Semaphore(8)
    found = await asyncio.gather(*(describe(app, t, gate) for t in args.targets))
    print(sum(found), f"{time.perf_counter() - started:.3f}")
    sys.stdout.flush()
    app.close()


if __name__ == "__main__":
    asyncio.run(main())
