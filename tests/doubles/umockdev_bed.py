"""A umockdev testbed that tests drive over stdin: a fake sysfs, udev database and /dev in
which USB devices are plugged and unplugged, with the uevents the kernel would send.

Run it under `umockdev-wrapper /usr/bin/python3` (the testbed works through the preload
library). It prints `ready <dir>`; a process started with LD_PRELOAD=libumockdev-preload.so.0
and UMOCKDEV_DIR=<dir> sees the testbed as its /sys and /dev. Commands, one per line, each
answered with `ok` or `error <message>`:

    add <file.umockdev>     add the devices described in the file (sends "add" uevents)
    remove <syspath>        remove a device and everything below it, children first
                            (sends "remove" uevents)
"""

import os
import shutil
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import GLib, UMockdev  # noqa: E402


def main():
    if "umockdev-preload" not in os.environ.get("LD_PRELOAD", ""):
        sys.exit("umockdev_bed.py must run under umockdev-wrapper")
    bed = UMockdev.Testbed.new()
    root = bed.get_root_dir()
    print("ready", root, flush=True)
    try:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            try:
                if cmd == "add":
                    with open(arg, encoding="utf-8") as f:
                        bed.add_from_string(f.read())
                elif cmd == "remove":
                    remove(bed, root, arg)
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                print("ok", flush=True)
            except (GLib.Error, OSError, ValueError) as e:
                print("error", str(e).replace("\n", " "), flush=True)
    finally:
        del bed
        shutil.rmtree(root, ignore_errors=True)


def remove(bed, root, syspath):
    """Removes `syspath` and the devices below it, deepest first, as the kernel does."""
    top = os.path.join(root, syspath.lstrip("/"))
    if not os.path.isdir(top):
        raise ValueError(f"no device {syspath}")
    devices = []
    for d, _, files in os.walk(top):
        if "uevent" in files:
            devices.append("/" + os.path.relpath(d, root))
    for dev in sorted(devices, key=len, reverse=True):
        bed.remove_device(dev)


if __name__ == "__main__":
    main()
