"""A umockdev testbed (fake sysfs and udev database) that runs one command inside it and
changes it on request: USB devices are added and removed while the command runs.

Run under `umockdev-wrapper` with Debian's Python (`gir1.2-umockdev-1.0`, `python3-gi`):

    umockdev-wrapper /usr/bin/python3 umockdev_testbed.py CONTROL_SOCKET -- COMMAND...

Requests arrive on the unix socket CONTROL_SOCKET, one JSON object per line:
{"add": "<umockdev text>"} or {"remove": "/sys/devices/..."}; each is answered with
{"ok": true} or {"error": "..."}. The command's path to the socket is in
DOWSER_UMOCKDEV_CONTROL. The testbed exits with the command's status.

umockdev 0.17 keeps the device node of a removed tty: a kernel name (ttyUSB0) can be
given to one device only in the life of a testbed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402


def serve(testbed, conn):
    with conn, conn.makefile("rw") as f:
        for line in f:
            try:
                req = json.loads(line)
                if "add" in req:
                    testbed.add_from_string(req["add"])
                elif "remove" in req:
                    testbed.remove_device(req["remove"])
                else:
                    raise ValueError(f"unknown request {line!r}")
                f.write(json.dumps({"ok": True}) + "\n")
            except Exception as e:  # the error goes back to the test
                f.write(json.dumps({"error": str(e)}) + "\n")
            f.flush()


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: umockdev_testbed.py CONTROL_SOCKET -- COMMAND...")
    if "umockdev" not in os.environ.get("LD_PRELOAD", ""):
        sys.exit("umockdev_testbed.py must run under umockdev-wrapper")
    testbed = UMockdev.Testbed.new()
    path = sys.argv[1]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(testbed, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    # The testbed sets UMOCKDEV_DIR in the C environment, not in os.environ.
    env = dict(os.environ, UMOCKDEV_DIR=testbed.get_root_dir(), DOWSER_UMOCKDEV_CONTROL=path)
    child = subprocess.Popen(sys.argv[3:], env=env)
    # Stopping the testbed stops the command too.
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        status = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        status = child.wait()
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
