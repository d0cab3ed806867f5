"""What a user would write instead of dowser to find ONVIF cameras: python wsdiscovery's
search for NetworkVideoTransmitters (the same probe window as dowser's), then
GetDeviceInformation and GetCapabilities on each camera's device service over plain HTTP,
with the same concurrency as dowser's default (8). Prints the number of cameras described
and the seconds. Needs a non-loopback address (wsdiscovery skips loopback).

Usage: bench_onvif_discover.py WINDOW_SECONDS
"""

import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from wsdiscovery import QName
from wsdiscovery.discovery import ThreadedWSDiscovery

NVT = QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter", "dn")
ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
    '<s:Body>{}</s:Body></s:Envelope>'
)
CALLS = [
    '<GetDeviceInformation xmlns="http://www.onvif.org/ver10/device/wsdl"/>',
    '<GetCapabilities xmlns="http://www.onvif.org/ver10/device/wsdl"><Category>All</Category></GetCapabilities>',
]


def describe(xaddr: str) -> int:
    try:
        for body in CALLS:
            request = urllib.request.Request(
                xaddr,
                data=ENVELOPE.format(body).encode(),
                headers={"Content-Type": "application/soap+xml; charset=utf-8"},
            )
            with urllib.request.urlopen(request, timeout=3) as answer:
                answer.read()
        return 1
    except Exception:  # noqa: BLE001 - a camera that fails is not found
        return 0


def main() -> None:
    window = float(sys.argv[1])
    started = time.perf_counter()
    wsd = ThreadedWSDiscovery()
    wsd.start()
    services = wsd.searchServices(types=[NVT], timeout=window)
    xaddrs = [s.getXAddrs()[0] for s in services if s.getXAddrs()]
    with ThreadPoolExecutor(8) as pool:
        found = sum(pool.map(describe, xaddrs))
    elapsed = time.perf_counter() - started
    wsd.stop()
    print(found, f"{elapsed:.3f}")


if __name__ == "__main__":
    main()
