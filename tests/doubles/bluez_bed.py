"""BlueZ as python-dbusmock's `bluez5` template on a private system bus, driven over stdin.

Prints `ready <bus address>`; a process started with DBUS_SYSTEM_BUS_ADDRESS=<address>
talks to this mock as it would to bluetoothd. Commands are JSON objects, one per line, each
answered with `ok` or `error <message>`:

    {"op": "start_bluez"}                      bluetoothd appears on the bus (the mock starts)
    {"op": "stop_bluez"}                       bluetoothd goes away
    {"op": "adapter", "name": "hci0"}          an adapter
    {"op": "remove_adapter", "name": "hci0"}
    {"op": "device", "adapter": "hci0", "address": "C0:FF:EE:00:00:01", "name": "ENV-1",
     "uuids": [...], "manufacturer": {"76": [1, 2]}, "rssi": -60}
                                               a device heard for the first time
                                               (InterfacesAdded); name, uuids, manufacturer
                                               and rssi are optional
    {"op": "advertise", "adapter": "hci0", "address": "...", "rssi": -58,
     "manufacturer": {...}}                    another advertisement (PropertiesChanged)
    {"op": "remove", "adapter": "hci0", "address": "..."}
                                               BlueZ forgets the device (InterfacesRemoved)

The template's own AddDevice gives ManufacturerData and ServiceData the wrong D-Bus types
(an array where BlueZ has a dictionary), so devices are made here with BlueZ's types.
"""

import json
import os
import subprocess
import sys
import tempfile

import dbus
import dbusmock
from dbusmock import DBusTestCase

DEVICE_IFACE = "org.bluez.Device1"
ADAPTER_IFACE = "org.bluez.Adapter1"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:dir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


class Bed:
    def __init__(self, workdir):
        conf = os.path.join(workdir, "system.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(BUS_CONFIG.format(dir=workdir))
        self.daemon = subprocess.Popen(
            ["dbus-daemon", "--nofork", "--print-address=1", "--config-file=" + conf],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        )
        self.address = self.daemon.stdout.readline().strip()
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        self.bus = dbus.bus.BusConnection(self.address)
        self.mock = None

    def start_bluez(self):
        if self.mock is None:
            self.mock, _ = DBusTestCase.spawn_server_template(
                "bluez5", {}, stdout=subprocess.DEVNULL, system_bus=True
            )

    def stop_bluez(self):
        if self.mock is not None:
            self.mock.terminate()
            self.mock.wait()
            self.mock = None

    def obj(self, path, iface):
        return dbus.Interface(self.bus.get_object("org.bluez", path), iface)

    def adapter(self, name):
        self.obj("/org/bluez", "org.bluez.Mock").AddAdapter(name, "dowser-test")

    def remove_adapter(self, name):
        self.obj("/org/bluez", "org.bluez.Mock").RemoveAdapterWithDevices(name)

    @staticmethod
    def device_path(cmd):
        return "/org/bluez/{}/dev_{}".format(cmd["adapter"], cmd["address"].upper().replace(":", "_"))

    @staticmethod
    def manufacturer(data):
        return dbus.Dictionary(
            {dbus.UInt16(int(k)): dbus.Array([dbus.Byte(b) for b in v], signature="y", variant_level=1)
             for k, v in data.items()},
            signature="qv",
            variant_level=1,
        )

    def device(self, cmd):
        path = self.device_path(cmd)
        props = {
            "Address": dbus.String(cmd["address"].upper(), variant_level=1),
            "AddressType": dbus.String(cmd.get("address_type", "public"), variant_level=1),
            "Alias": dbus.String(cmd.get("name") or cmd["address"].upper().replace(":", "-"), variant_level=1),
            "Adapter": dbus.ObjectPath("/org/bluez/" + cmd["adapter"], variant_level=1),
            "Paired": dbus.Boolean(False, variant_level=1),
            "Bonded": dbus.Boolean(False, variant_level=1),
            "Connected": dbus.Boolean(False, variant_level=1),
            "Trusted": dbus.Boolean(False, variant_level=1),
            "Blocked": dbus.Boolean(False, variant_level=1),
            "LegacyPairing": dbus.Boolean(False, variant_level=1),
            "ServicesResolved": dbus.Boolean(False, variant_level=1),
            "UUIDs": dbus.Array(cmd.get("uuids", []), signature="s", variant_level=1),
            "ManufacturerData": self.manufacturer(cmd.get("manufacturer", {})),
            "ServiceData": dbus.Dictionary({}, signature="sv", variant_level=1),
        }
        if cmd.get("name"):
            props["Name"] = dbus.String(cmd["name"], variant_level=1)
        if "rssi" in cmd:
            props["RSSI"] = dbus.Int16(cmd["rssi"], variant_level=1)
        root = self.obj("/", "org.freedesktop.DBus.Mock")
        root.AddObject(path, DEVICE_IFACE, props, [])
        root.EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                        [dbus.ObjectPath(path), {DEVICE_IFACE: props}])

    def advertise(self, cmd):
        changed = {}
        if "rssi" in cmd:
            changed["RSSI"] = dbus.Int16(cmd["rssi"], variant_level=1)
        if "manufacturer" in cmd:
            changed["ManufacturerData"] = self.manufacturer(cmd["manufacturer"])
        self.obj(self.device_path(cmd), "org.freedesktop.DBus.Mock").UpdateProperties(DEVICE_IFACE, changed)

    def remove(self, cmd):
        self.obj("/org/bluez/" + cmd["adapter"], ADAPTER_IFACE).RemoveDevice(dbus.ObjectPath(self.device_path(cmd)))

    def close(self):
        self.stop_bluez()
        self.daemon.terminate()
        self.daemon.wait()


def main():
    with tempfile.TemporaryDirectory(prefix="dowser-bluez-") as workdir:
        bed = Bed(workdir)
        try:
            print("ready", bed.address, flush=True)
            for line in sys.stdin:
                if not line.strip():
                    continue
                try:
                    cmd = json.loads(line)
                    op = cmd["op"]
                    if op == "start_bluez":
                        bed.start_bluez()
                    elif op == "stop_bluez":
                        bed.stop_bluez()
                    elif op == "adapter":
                        bed.adapter(cmd["name"])
                    elif op == "remove_adapter":
                        bed.remove_adapter(cmd["name"])
                    elif op in ("device", "advertise", "remove"):
                        getattr(bed, op)(cmd)
                    else:
                        raise ValueError(f"unknown op {op!r}")
                    print("ok", flush=True)
                except (dbus.exceptions.DBusException, KeyError, ValueError) as e:
                    print("error", str(e).replace("\n", " "), flush=True)
        finally:
            bed.close()


if __name__ == "__main__":
    main()
