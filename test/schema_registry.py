"""A small Confluent-compatible Schema Registry for the tests.

It implements the endpoints kafka_producer calls and the ones the tests read
back with: schemas get global ids by their canonical form, each subject keeps
its versions, and a new version is checked against the latest one under the
subject's compatibility level (BACKWARD by default, as Confluent's) by real
Avro schema resolution.  Tests can stop and restart it on the same port,
make it answer errors, and ask for basic authentication.

Run standalone with: /usr/bin/python3 test/schema_registry.py --port 8081
"""

import argparse
import base64
import http.server
import json
import re
import socket
import threading
import time

import avro.errors
import avro.schema

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
INCOMPATIBLE = ("Schema being registered is incompatible with an earlier schema for "
                "subject \"{subject}\"")

PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class SchemaRegistry:
    """The registry's state, and an HTTP server in a daemon thread."""

    def __init__(self, user=None, password=None):
        self.credentials = None
        if user is not None:
            self.credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.lock = threading.Lock()
        self.schemas = {}           # id -> schema text as registered
        self.ids = {}               # canonical form -> id
        self.subjects = {}          # subject -> [id of each version]
        self.compatibility = {None: "BACKWARD"}
        self.requests = []          # (method, path) of every request
        self.failures = []          # statuses to answer next, whatever is asked
        self.delay = 0              # seconds each registration waits before its answer
        self.port = None
        self.server = None
        self.connections = set()    # open sockets, closed by stop()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        """Listens on a free port the first time, on the same one after."""
        registry = self

        class Handler(RequestHandler):
            pass
        Handler.registry = registry

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", self.port or 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        """Closes the listening socket, so connections are refused, and
        the open ones, as a registry that went down would."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def hang(self, seconds):
        """Each registration (POST) waits seconds before it is answered, as
        a registry that is overloaded or behind a black-holing firewall."""
        with self.lock:
            self.delay = seconds

    def fail_next(self, count, status=500, padding=0):
        """The next count requests get status, with padding bytes more in
        the error message."""
        with self.lock:
            self.failures.extend([(status, padding)] * count)

    def set_compatibility(self, level, subject=None):
        with self.lock:
            self.compatibility[subject] = level

    def schema(self, schema_id):
        with self.lock:
            return self.schemas[schema_id]

    # The endpoints, as (status, body) from parsed requests.

    def register(self, subject, body):
        try:
            text = json.loads(body)["schema"]
            parsed = avro.schema.parse(text)
        except (ValueError, KeyError, TypeError, avro.errors.AvroException) as error:
            return 422, {"error_code": 42201, "message": f"Invalid schema: {error}"}
        canonical = parsed.canonical_form
        with self.lock:
            versions = self.subjects.setdefault(subject, [])
            known = self.ids.get(canonical)
            if known in versions:
                return 200, {"id": known}
            level = self.compatibility.get(subject, self.compatibility[None])
            if versions and not compatible(level, json.loads(text),
                                           json.loads(self.schemas[versions[-1]])):
                return 409, {"error_code": 409,
                             "message": INCOMPATIBLE.format(subject=subject)}
            if known is None:
                known = len(self.schemas) + 1
                self.schemas[known] = text
                self.ids[canonical] = known
            versions.append(known)
            return 200, {"id": known}

    def answer(self, method, path, body):
        with self.lock:
            if self.failures:
                status, padding = self.failures.pop(0)
                return status, {"error_code": status * 100,
                                "message": "failing as told" + "!" * padding}
        routes = [
            ("POST", r"/subjects/([^/]+)/versions", self.register),
            ("GET", r"/schemas/ids/(\d+)", self.get_schema),
            ("GET", r"/subjects", self.list_subjects),
            ("GET", r"/subjects/([^/]+)/versions", self.list_versions),
            ("GET", r"/subjects/([^/]+)/versions/(\d+|latest)", self.get_version),
            ("GET", r"/config(?:/([^/]+))?", self.get_config),
            ("PUT", r"/config(?:/([^/]+))?", self.put_config),
            ("POST", r"/compatibility/subjects/([^/]+)/versions/(latest|\d+)(?:\?verbose=true)?",
             self.check_compatibility),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                arguments = list(match.groups())
                if method in ("POST", "PUT"):
                    arguments.append(body)
                return handler(*arguments)
        return 404, {"error_code": 404, "message": f"HTTP 404 Not Found: {method} {path}"}

    def check_compatibility(self, subject, version, body):
        """Whether schema would be taken as subject's next version."""
        with self.lock:
            versions = self.subjects.get(subject) or []
            if not versions:
                return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
            latest = json.loads(self.schemas[versions[-1]])
            level = self.compatibility.get(subject, self.compatibility[None])
        text = json.loads(body)["schema"]
        if compatible(level, json.loads(text), latest):
            return 200, {"is_compatible": True, "messages": []}
        return 200, {"is_compatible": False,
                     "messages": [INCOMPATIBLE.format(subject=subject)]}

    def get_schema(self, schema_id):
        with self.lock:
            text = self.schemas.get(int(schema_id))
        if text is None:
            return 404, {"error_code": 40403, "message": "Schema not found"}
        return 200, {"schema": text}

    def list_subjects(self):
        with self.lock:
            return 200, sorted(self.subjects)

    def list_versions(self, subject):
        with self.lock:
            versions = self.subjects.get(subject)
        if not versions:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
        return 200, list(range(1, len(versions) + 1))

    def get_version(self, subject, version):
        with self.lock:
            versions = self.subjects.get(subject) or []
            number = len(versions) if version == "latest" else int(version)
            if not 1 <= number <= len(versions):
                return 404, {"error_code": 40402, "message": "Version not found."}
            schema_id = versions[number - 1]
            return 200, {"subject": subject, "version": number, "id": schema_id,
                         "schema": self.schemas[schema_id]}

    def get_config(self, subject):
        with self.lock:
            return 200, {"compatibilityLevel":
                         self.compatibility.get(subject, self.compatibility[None])}

    def put_config(self, subject, body):
        try:
            level = json.loads(body)["compatibility"].upper()
        except (ValueError, KeyError, AttributeError):
            return 422, {"error_code": 42203, "message": "Invalid compatibility level"}
        if level not in ("NONE", "BACKWARD", "FORWARD", "FULL"):
            return 422, {"error_code": 42203, "message": "Invalid compatibility level"}
        self.set_compatibility(level, subject)
        return 200, {"compatibility": level}


class RequestHandler(http.server.BaseHTTPRequestHandler):
    registry = None
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.registry.lock:
            self.registry.connections.add(self.connection)

    def finish(self):
        with self.registry.lock:
            self.registry.connections.discard(self.connection)
        super().finish()

    def handle_any(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        registry = self.registry
        with registry.lock:
            registry.requests.append((method, self.path))
            delay = registry.delay if method == "POST" else 0
        time.sleep(delay)
        if registry.credentials is not None and \
                self.headers.get("Authorization") != f"Basic {registry.credentials}":
            status, answer = 401, {"error_code": 40101, "message": "Unauthorized"}
        else:
            status, answer = registry.answer(method, self.path, body)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def log_message(self, format, *args):
        pass


def compatible(level, new, latest):
    """Whether a new schema may follow the latest one under a level."""
    backward = level in ("BACKWARD", "FULL")
    forward = level in ("FORWARD", "FULL")
    return (not backward or can_read(Schema(new), Schema(latest))) and \
        (not forward or can_read(Schema(latest), Schema(new)))


class Schema:
    """A schema in JSON form with its named types, for resolution."""

    def __init__(self, definition):
        self.names = {}
        self.root = self.collect(definition, None)

    def collect(self, node, namespace):
        if isinstance(node, str):
            return node
        if isinstance(node, list):
            return [self.collect(branch, namespace) for branch in node]
        kind = node["type"]
        if kind in ("record", "error", "enum", "fixed"):
            name = node["name"]
            namespace = node.get("namespace", namespace)
            full = name if "." in name or not namespace else f"{namespace}.{name}"
            node = dict(node, fullname=full)
            self.names[full] = node
            if kind != "enum" and kind != "fixed":
                node["fields"] = [dict(field, type=self.collect(field["type"], namespace))
                                  for field in node["fields"]]
            return node
        if kind == "array":
            return dict(node, items=self.collect(node["items"], namespace))
        if kind == "map":
            return dict(node, values=self.collect(node["values"], namespace))
        return self.collect(kind, namespace)   # {"type": "int", "logicalType": ...}

    def resolve(self, node):
        if isinstance(node, str) and node not in PRIMITIVES:
            return self.names.get(node) or next(
                named for full, named in self.names.items() if full.split(".")[-1] == node)
        return node


def kind_of(node):
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    return "record" if node["type"] == "error" else node["type"]


def can_read(reader, writer):
    """Avro schema resolution: can data written with writer be read with reader?"""
    return readable(reader, reader.root, writer, writer.root, set())


def readable(reader, reading, writer, writing, assumed):
    reading, writing = reader.resolve(reading), writer.resolve(writing)
    read_kind, write_kind = kind_of(reading), kind_of(writing)
    if write_kind == "union":
        return all(readable(reader, reading, writer, branch, assumed) for branch in writing)
    if read_kind == "union":
        return any(readable(reader, branch, writer, writing, assumed) for branch in reading)
    if write_kind in PRIMITIVES:
        return read_kind in PROMOTIONS.get(write_kind, {write_kind})
    if read_kind != write_kind:
        return False
    if read_kind == "array":
        return readable(reader, reading["items"], writer, writing["items"], assumed)
    if read_kind == "map":
        return readable(reader, reading["values"], writer, writing["values"], assumed)
    if reading["name"].split(".")[-1] != writing["name"].split(".")[-1]:
        return False
    if read_kind == "fixed":
        return reading["size"] == writing["size"]
    if read_kind == "enum":
        return "default" in reading or set(writing["symbols"]) <= set(reading["symbols"])
    pair = (reading["fullname"], writing["fullname"])
    if pair in assumed:
        return True
    assumed = assumed | {pair}
    written = {field["name"]: field for field in writing["fields"]}
    for field in reading["fields"]:
        source = written.get(field["name"])
        if source is None:
            if "default" not in field:
                return False
        elif not readable(reader, field["type"], writer, source["type"], assumed):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8081)
    arguments = parser.parse_args()
    registry = SchemaRegistry()
    registry.port = arguments.port
    registry.start()
    print(f"schema registry listening on {registry.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        registry.stop()


if __name__ == "__main__":
    main()
