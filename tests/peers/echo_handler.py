"""A discovery handler written the way a third party writes one: in Python, with grpcio, from
dowser's protocol file alone (discovery-handlers/sdk/proto/discovery.proto, wire-compatible
with Akri's v0). It behaves like Akri's debugEcho handler:

- details are YAML, `descriptions: [foo0, foo1]`: one device per description, its id the
  description and its property DEBUG_ECHO_DESCRIPTION the description;
- every discovery property NAME the agent passes becomes the device property ECHO_NAME with
  the same value, so that a test can see which properties arrived;
- while the availability file (--availability-file) contains OFFLINE, the device list is
  empty; it is looked at every 0.2 s and a list is sent only when it changed.

It serves `DiscoveryHandler` on a unix socket and keeps registered with the node's agent:
registration is retried every 0.5 s until the agent answers, and made again whenever the
agent's registration socket is replaced (an agent that restarted forgot its handlers).
Prints `ready` once serving and registered; stops cleanly on SIGTERM or SIGINT.

Usage: echo_handler.py [--name debugEcho] [--shared] [--socket PATH]
                       [--registration-socket PATH] [--availability-file PATH] [--proto PATH]
"""

import argparse
import importlib
import os
import signal
import stat
import sys
import tempfile
import threading
from concurrent import futures

import grpc
import yaml
from grpc_tools import protoc

# How often the availability file is looked at.
AVAILABILITY_POLL = 0.2
# How long to wait before registering again after a failure, and how often the agent's
# registration socket is looked at.
REGISTER_RETRY = 0.5
WATCH_AGENT = 0.5
# How long one registration call may take.
REGISTER_TIMEOUT = 2.0

DEFAULT_DIRECTORY = "/var/lib/dowser/handlers"
DEFAULT_PROTO = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "..", "discovery-handlers", "sdk", "proto", "discovery.proto",
)


def log(message):
    print(f"echo_handler: {message}", file=sys.stderr, flush=True)


def generate_stubs(proto):
    """Compiles `proto` with grpc_tools' protoc into a temporary directory and imports the
    generated modules (discovery_pb2, discovery_pb2_grpc)."""
    proto = os.path.abspath(proto)
    if not os.path.isfile(proto):
        sys.exit(f"echo_handler: no protocol file at {proto} (--proto)")
    include = os.path.dirname(proto)
    module = os.path.splitext(os.path.basename(proto))[0]
    with tempfile.TemporaryDirectory(prefix="echo-handler-stubs-") as out:
        # protoc's own .proto files (none are imported today, but a protocol may grow to).
        well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        code = protoc.main([
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ])
        if code != 0:
            sys.exit(f"echo_handler: protoc failed on {proto} (exit {code})")
        sys.path.insert(0, out)
        try:
            pb2 = importlib.import_module(f"{module}_pb2")
            pb2_grpc = importlib.import_module(f"{module}_pb2_grpc")
        finally:
            sys.path.remove(out)
    return pb2, pb2_grpc


class InvalidDetails(Exception):
    pass


def parse_details(text):
    """The descriptions of `descriptions: [..]`, or InvalidDetails saying what is wrong."""
    if not text.strip():
        raise InvalidDetails("no details: expected descriptions: [foo0, foo1]")
    try:
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        # The problem and where, without PyYAML's quote of the text (the user has it).
        where = ""
        if e.problem_mark is not None:
            where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        raise InvalidDetails(f"not YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise InvalidDetails(f"not YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, dict):
        raise InvalidDetails(
            f"expected a mapping such as descriptions: [foo0, foo1], got {type(doc).__name__}"
        )
    if "descriptions" not in doc:
        raise InvalidDetails("missing field descriptions (descriptions: [foo0, foo1])")
    descriptions = doc["descriptions"]
    if not isinstance(descriptions, list):
        raise InvalidDetails(
            f"descriptions must be a list of strings, got {type(descriptions).__name__}"
        )
    for i, d in enumerate(descriptions):
        if not isinstance(d, str) or not d:
            raise InvalidDetails(
                f"descriptions[{i}] must be a non-empty string, got {d!r}"
            )
    return descriptions


class Availability:
    """The availability file: OFFLINE in it means no devices."""

    def __init__(self, path):
        self.path = path

    def online(self):
        if not self.path:
            return True
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return "OFFLINE" not in f.read()
        except FileNotFoundError:
            return True


def make_servicer(pb2, pb2_grpc, name, availability, stopping):
    class Echo(pb2_grpc.DiscoveryHandlerServicer):
        def Discover(self, request, context):
            try:
                descriptions = parse_details(request.discovery_details)
            except InvalidDetails as e:
                message = f"invalid discovery details for the {name} handler: {e}"
                log(message)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            echoed = {}
            for key, value in request.discovery_properties.items():
                data = value.vec if value.HasField("vec") else b""
                echoed[f"ECHO_{key}"] = data.decode("utf-8", errors="replace")
            names = sorted(request.discovery_properties)
            log(f"Discover: {len(descriptions)} description(s), properties {names}")

            def devices():
                if not availability.online():
                    return []
                return [
                    pb2.Device(
                        id=d,
                        properties={"DEBUG_ECHO_DESCRIPTION": d, **echoed},
                    )
                    for d in descriptions
                ]

            ended = threading.Event()
            context.add_callback(ended.set)
            sent = None
            while context.is_active() and not stopping.is_set():
                now = devices()
                if now != sent:
                    log(f"sending {len(now)} device(s)")
                    yield pb2.DiscoverResponse(devices=now)
                    sent = now
                ended.wait(AVAILABILITY_POLL)

    return Echo()


def socket_identity(path):
    """Which file `path` is now (device, inode and change time), or None. The change time
    tells a new socket from an old one even when the filesystem reuses the inode number."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def register(pb2_grpc, registration_socket, request):
    # gRPC's C core sends the socket's path, percent-encoded, as the HTTP/2 :authority of a
    # unix socket channel; the agent's HTTP/2 server (Rust's h2, under tonic) refuses that as
    # malformed (RST_STREAM PROTOCOL_ERROR, seen as INTERNAL "Stream removed"). `localhost`
    # is what gRPC's other implementations send over unix sockets.
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix:{registration_socket}", options=options) as channel:
        pb2_grpc.RegistrationStub(channel).RegisterDiscoveryHandler(
            request, timeout=REGISTER_TIMEOUT
        )


def stay_registered(pb2_grpc, registration_socket, request, registered, stopping):
    """Registers, then registers again whenever the agent's socket is replaced."""
    registered_with = None
    said_waiting = False
    while not stopping.is_set():
        now = socket_identity(registration_socket)
        if now is None:
            # No agent: whichever comes next is registered with.
            registered_with = None
            if not said_waiting:
                log(f"waiting for the agent's registration socket {registration_socket}")
                said_waiting = True
        elif now != registered_with:
            try:
                register(pb2_grpc, registration_socket, request)
            except grpc.RpcError as e:
                log(f"cannot register with the agent yet: {e.code().name}: {e.details()}")
                stopping.wait(REGISTER_RETRY)
                continue
            log(f"registered with the agent at {registration_socket} as {request.name}")
            registered_with = now
            registered.set()
        stopping.wait(WATCH_AGENT)


def main():
    directory = os.environ.get("DISCOVERY_HANDLERS_DIRECTORY", DEFAULT_DIRECTORY)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="debugEcho",
                        help="the name to register as (spec.discovery.external.name)")
    parser.add_argument("--shared", action="store_true",
                        help="register the devices as reachable from several nodes")
    parser.add_argument("--socket",
                        help="the unix socket to serve on (default: "
                             "$DISCOVERY_HANDLERS_DIRECTORY/<name>.sock)")
    parser.add_argument("--registration-socket",
                        default=os.path.join(directory, "agent-registration.sock"),
                        help="the agent's registration socket (default: "
                             "$DISCOVERY_HANDLERS_DIRECTORY/agent-registration.sock)")
    parser.add_argument("--availability-file",
                        help="a file that makes the devices go while it contains OFFLINE")
    parser.add_argument("--proto", default=DEFAULT_PROTO,
                        help="the discovery protocol file (default: dowser's, found from "
                             "this script's place in the repository)")
    args = parser.parse_args()
    socket_path = os.path.abspath(args.socket or os.path.join(directory, f"{args.name}.sock"))

    stopping = threading.Event()

    def stop(signum, _frame):
        log(f"stopping on {signal.Signals(signum).name}")
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    pb2, pb2_grpc = generate_stubs(args.proto)

    # A socket left by an earlier run is replaced; any other file there is not ours to remove.
    try:
        if stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            os.unlink(socket_path)
    except FileNotFoundError:
        pass
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb2_grpc.add_DiscoveryHandlerServicer_to_server(
        make_servicer(pb2, pb2_grpc, args.name, Availability(args.availability_file), stopping),
        server,
    )
    try:
        server.add_insecure_port(f"unix:{socket_path}")
    except RuntimeError as e:
        sys.exit(f"echo_handler: cannot listen on {socket_path}: {e}")
    server.start()
    log(f"serving DiscoveryHandler on {socket_path}")

    request = pb2.RegisterDiscoveryHandlerRequest(
        name=args.name,
        endpoint=socket_path,
        endpoint_type=pb2.RegisterDiscoveryHandlerRequest.UDS,
        shared=args.shared,
    )
    registered = threading.Event()
    registering = threading.Thread(
        target=stay_registered,
        args=(pb2_grpc, os.path.abspath(args.registration_socket), request, registered, stopping),
        daemon=True,
    )
    registering.start()

    while not stopping.is_set():
        if registered.wait(0.1):
            print("ready", flush=True)
            break
    stopping.wait()

    server.stop(grace=1).wait()
    registering.join(timeout=REGISTER_TIMEOUT + 1)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    log("stopped")


if __name__ == "__main__":
    main()
