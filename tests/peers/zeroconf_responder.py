"""An independent mDNS / DNS-SD responder (python-zeroconf), driven over stdin, for dowser's tests.

Usage: zeroconf_responder.py [--address 127.0.0.1]

Reads one JSON command per line on stdin and answers one JSON line on stdout:

  {"op": "register", "name": "Press 7", "type": "_opcua-tcp._tcp.local.", "port": 4840,
   "txt": {"vendor": "Acme"}, "host": "press-7.local.", "ttl": 120}
      -> {"registered": "<full name>", "at": <unix time when the first announcement goes out>}
  {"op": "unregister", "name": "Press 7", "type": "_opcua-tcp._tcp.local."}
      -> {"unregistered": "<full name>"}           (goodbye packets sent)

Prints {"ready": true} once its sockets are open. Killed with SIGKILL, it sends no goodbye,
so browsers forget its services only when their records expire ("ttl" seconds).
"""

import argparse
import asyncio
import json
import socket
import sys
import time

from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="127.0.0.1", help="interface address to use")
    args = parser.parse_args()

    zc = AsyncZeroconf(interfaces=[args.address], ip_version=IPVersion.V4Only)
    services: dict[str, ServiceInfo] = {}
    reply({"ready": True})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            full = f"{cmd['name']}.{cmd['type']}"
            if cmd["op"] == "register":
                ttl = int(cmd.get("ttl", 120))
                info = ServiceInfo(
                    cmd["type"],
                    full,
                    port=int(cmd["port"]),
                    properties=cmd.get("txt", {}),
                    server=cmd.get("host", "zeroconf-peer.local."),
                    addresses=[socket.inet_aton(args.address)],
                    host_ttl=ttl,
                    other_ttl=ttl,
                )
                # Returns after probing; the announcements start right away.
                announcing = await zc.async_register_service(info)
                at = time.time()
                services[full] = info
                reply({"registered": full, "at": at})
                await announcing
            elif cmd["op"] == "unregister":
                info = services.pop(full)
                await (await zc.async_unregister_service(info))
                reply({"unregistered": full})
            else:
                reply({"error": f"unknown op {cmd['op']!r}"})
        except Exception as e:  # one bad command must not stop the peer
            reply({"error": repr(e)})
    await zc.async_close()


if __name__ == "__main__":
    asyncio.run(main())
