"""An independent WS-Discovery publisher (python wsdiscovery) for dowser's ONVIF tests.

Usage: wsdiscovery_publisher.py --xaddr URL [--scope URI ...]
Publishes one NetworkVideoTransmitter (a Hello, then ProbeMatches for probes), prints
"ready <endpoint reference>", and on "bye" from standard input withdraws it (a Bye) and
prints "gone". It needs a non-loopback address on the machine (wsdiscovery skips loopback).
"""

import argparse
import sys

from wsdiscovery import QName, Scope
from wsdiscovery.publishing import ThreadedWSPublishing

NVT = QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter", "dn")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--xaddr", required=True)
    parser.add_argument("--scope", action="append", default=[])
    args = parser.parse_args()
    publisher = ThreadedWSPublishing()
    publisher.start()
    publisher.publishService(types=[NVT], scopes=[Scope(s) for s in args.scope], xAddrs=[args.xaddr])
    print("ready", publisher.uuid, flush=True)
    for line in sys.stdin:
        if line.strip() == "bye":
            publisher.clearLocalServices()
            print("gone", flush=True)
    publisher.stop()


if __name__ == "__main__":
    main()
