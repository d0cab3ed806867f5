"""What a user would write instead of dowser to identify Modbus units: pymodbus's async
client, Read Device Identification (basic objects) on every host x unit id, with the same
concurrency as dowser's default (64). Prints the number of units identified and the seconds.

Usage: bench_modbus_identify.py --hosts 127.90.1.1-50 --port 5020 --units 1-2
"""

import argparse
import asyncio
import ipaddress
import time

from pymodbus.client import AsyncModbusTcpClient


def hosts(spec: str) -> list[str]:
    first, last = spec.split("-")
    start = ipaddress.ip_address(first)
    prefix = first.rsplit(".", 1)[0]
    end = ipaddress.ip_address(f"{prefix}.{last}") if "." not in last else ipaddress.ip_address(last)
    return [str(ipaddress.ip_address(int(start) + i)) for i in range(int(end) - int(start) + 1)]


async def identify(host: str, port: int, units: list[int], gate: asyncio.Semaphore) -> int:
    async with gate:
        client = AsyncModbusTcpClient(host, port=port, timeout=1, retries=0)
        found = 0
        try:
            if not await client.connect():
                return 0
            for unit in units:
                try:
                    rsp = await client.read_device_information(device_id=unit)
                except Exception:  # noqa: BLE001 - a unit that fails is not found
                    continue
                if not rsp.isError() and rsp.information:
                    found += 1
        finally:
            client.close()
        return found


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--port", type=int, default=502)
    parser.add_argument("--units", default="1")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    a, b = (int(x) for x in args.units.split("-")) if "-" in args.units else (int(args.units),) * 2
    units = list(range(a, b + 1))
    gate = asyncio.Semaphore(args.concurrency)
    started = time.perf_counter()
    counts = await asyncio.gather(*(identify(h, args.port, units, gate) for h in hosts(args.hosts)))
    print(sum(counts), f"{time.perf_counter() - started:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
