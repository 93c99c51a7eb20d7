"""Helpers for the recording / inspector tests (``from inspectsupport import ...``).

The inspector sidecar is started once per process and binds a port, so every
test that needs it runs a small script in a subprocess (``python -m glassloop
--inspect 127.0.0.1:0 script.py`` or ``glassloop.start_inspector()``), reads the
URL the launcher prints on stderr, and talks to it with urllib or raw sockets.

The scripts and the test talk through two pipes:

* the script prints ``TAG {json}`` lines on stdout (``emit(tag, **data)``) and
  the test waits for them with ``Inspected.expect(tag)``;
* the test writes lines on the script's stdin (``Inspected.send(word)``) and the
  script waits for them with ``await command()``.

Nothing here asserts speed: every wait is a poll with a generous timeout.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

# ---------------------------------------------------------------------------
# Polling
# ---------------------------------------------------------------------------


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Call ``predicate()`` until it returns something truthy; return it.

    Raises AssertionError naming ``what`` (and the last value) on timeout.
    Exceptions from the predicate count as "not yet" until the deadline, then
    propagate.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}"[:4000])
        time.sleep(interval)


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Response {self.status} {self.body[:300]!r}>"


def http_get(url, timeout=10.0, method="GET", headers=None):
    """GET ``url``; a Response for every status (4xx/5xx included)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return Response(e.code, dict(e.headers), body)


def raw_request(host, port, data, timeout=10.0, read_limit=1 << 20):
    """Send raw bytes on a fresh connection and read until the server closes
    (or ``read_limit`` bytes, or ``timeout``). Returns the bytes read."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks, total = [], 0
        deadline = time.monotonic() + timeout
        while total < read_limit and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if _complete_response(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete_response(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def status_of(raw):
    """The status code of a raw HTTP response (None if there is none)."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# Scripts run under the inspector
# ---------------------------------------------------------------------------

# Put in front of every script: emit() and command() (see module docstring).
SCRIPT_PRELUDE = '''\
import asyncio, json, sys, threading, time

def emit(tag, **data):
    sys.stdout.write(tag + " " + json.dumps(data) + "\\n")
    sys.stdout.flush()

_commands = None

def _stdin_reader(loop, q):
    for line in sys.stdin:
        loop.call_soon_threadsafe(q.put_nowait, line.strip())
    loop.call_soon_threadsafe(q.put_nowait, "eof")

async def command():
    """The next line the test wrote on stdin ("eof" when it closed it)."""
    global _commands
    if _commands is None:
        _commands = asyncio.Queue()
        threading.Thread(target=_stdin_reader, args=(asyncio.get_running_loop(), _commands), daemon=True).start()
    return await _commands.get()

def blocking_command():
    """The next stdin line, read synchronously (for code outside a loop)."""
    return sys.stdin.readline().strip()
'''

URL_RE = re.compile(r"glassloop inspector: (http://\S+)")


class Inspected:
    """A script running in a subprocess with the inspector sidecar on.

    ``launcher="module"`` runs ``python -m glassloop --inspect ADDR script``;
    ``launcher="plain"`` runs ``python script`` (the script calls
    ``glassloop.start_inspector`` or ``new_event_loop(inspect=...)`` itself,
    or sets nothing and the test passes ``env``).
    """

    def __init__(self, source, tmp_path, *, launcher="module", address="127.0.0.1:0", env=None,
                 wait_url=True, url_timeout=20.0, args=()):
        self.path = os.path.join(str(tmp_path), f"script_{os.getpid()}_{id(self)}.py")
        with open(self.path, "w") as f:
            f.write(SCRIPT_PRELUDE)
            f.write(textwrap.dedent(source))
        if launcher == "module":
            cmd = [sys.executable, "-m", "glassloop", "--inspect", address, self.path, *args]
        else:
            cmd = [sys.executable, self.path, *args]
        full_env = dict(os.environ)
        full_env.pop("GLASSLOOP_INSPECT", None)
        full_env.pop("GLASSLOOP_TOKEN", None)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONFAULTHANDLER"] = "1"
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=full_env, cwd=str(tmp_path),
        )
        self.lines = queue.Queue()
        self.stdout_log = []
        self.stderr_log = []
        self._url = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.url = None
        self.host = self.port = None
        if wait_url:
            self.wait_url(url_timeout)

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr_log.append(line)
            m = URL_RE.search(line)
            if m:
                self._url.put(m.group(1))

    def wait_url(self, timeout=20.0):
        try:
            url = self._url.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the inspector printed no URL within {timeout} s\n{self.diagnostics()}")
        self.url = url.rstrip("/")
        m = re.match(r"http://([^:/]+):(\d+)", self.url)
        self.host, self.port = m.group(1), int(m.group(2))
        return self.url

    # -- the script's side channel --
    def expect(self, tag, timeout=20.0):
        """Wait for a ``TAG {json}`` line on stdout; return its data."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the script printed no {tag!r} within {timeout} s\n{self.diagnostics()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"the script ended before printing {tag!r}\n{self.diagnostics()}")
            word, _, rest = line.partition(" ")
            if word == tag:
                return json.loads(rest) if rest else {}

    def send(self, word="go"):
        self.proc.stdin.write((word + "\n").encode())
        self.proc.stdin.flush()

    # -- HTTP --
    def get(self, path, timeout=10.0, **kw):
        return http_get(self.url + path, timeout=timeout, **kw)

    def json(self, path, timeout=10.0):
        r = self.get(path, timeout=timeout)
        assert r.status == 200, f"GET {path}: {r.status} {r.body[:500]!r}"
        return r.json()

    def raw(self, data, timeout=10.0):
        return raw_request(self.host, self.port, data, timeout=timeout)

    def loops(self):
        return self.json("/api/v1/loops")["loops"]

    def only_loop(self, timeout=10.0):
        """The id of the one open loop (waits for it to register)."""
        rows = wait_for(lambda: [r for r in self.loops() if not r["closed"]], timeout, what="a registered loop")
        assert len(rows) == 1, rows
        return rows[0]["info"]["id"]

    def tables(self, loop_id, table, query="", fresh=True):
        sep = "&" if query else ""
        q = f"?{query}{sep}fresh=true" if fresh else (f"?{query}" if query else "")
        return self.json(f"/api/v1/loops/{loop_id}/{table}{q}")

    # -- life --
    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=20.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the script did not exit within {timeout} s\n{self.diagnostics()}")

    def finish(self, timeout=20.0):
        """Close stdin, wait for a clean exit (status 0)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.wait(timeout)
        time.sleep(0.05)  # let the reader threads drain
        assert rc == 0, f"the script exited with {rc}\n{self.diagnostics()}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def diagnostics(self):
        return ("--- stdout ---\n" + "\n".join(self.stdout_log[-40:]) +
                "\n--- stderr ---\n" + "\n".join(self.stderr_log[-60:]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# Server-Sent Events
# ---------------------------------------------------------------------------


class SSEClient:
    """A raw-socket SSE client: ``status`` and ``head``, then ``events()``.

    Decodes a chunked body incrementally; ``read=False`` sends the request and
    never reads (a client that does not read its stream).
    """

    def __init__(self, host, port, path="/api/v1/stream", timeout=10.0, read=True, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.raw = b""       # undecoded bytes after the head
        self.body = b""      # decoded body bytes not yet split into events
        self.status = None
        self.head = b""
        self.chunked = False
        self.ended = False
        if read:
            self._read_head(timeout)

    def _read_head(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        self.head, _, self.raw = buf.partition(b"\r\n\r\n")
        self.status = status_of(self.head)
        self.chunked = b"transfer-encoding: chunked" in self.head.lower()
        self._decode()

    def _decode(self):
        if not self.chunked:
            self.body += self.raw
            self.raw = b""
            return
        while True:
            line, sep, after = self.raw.partition(b"\r\n")
            if not sep:
                return
            n = int(line.split(b";")[0], 16)
            if n == 0:
                self.ended = True
                self.raw = b""
                return
            if len(after) < n + 2:
                return
            self.body += after[:n]
            self.raw = after[n + 2:]

    def events(self, timeout=10.0, stop=None):
        """Yield (event, data) pairs until ``stop(event, data)`` is true, the
        stream ends, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.body:
                text, _, self.body = self.body.partition(b"\n\n")
                ev = _parse_sse(text.decode("utf-8", "replace"))
                if ev is not None:
                    yield ev
                    if stop is not None and stop(*ev):
                        return
            left = deadline - time.monotonic()
            if left <= 0 or self.ended:
                return
            self.sock.settimeout(max(0.05, left))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return
            if not chunk:
                self.ended = True
                return
            self.raw += chunk
            self._decode()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _parse_sse(text):
    event, data = "message", []
    for line in text.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if not data:
        return None
    joined = "\n".join(data)
    try:
        return event, json.loads(joined)
    except ValueError:
        return event, joined


# ---------------------------------------------------------------------------
# Prometheus text format 0.0.4: a strict parser
# ---------------------------------------------------------------------------

METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FAMILY_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromFormatError(AssertionError):
    pass


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []  # (sample name, labels dict, value)

    def __repr__(self):
        return f"<Family {self.name} {self.type} {len(self.samples)} samples>"


def _parse_float(text, lineno):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise PromFormatError(f"line {lineno}: bad value {text!r}")
    return float(text)


def _parse_labels(s, i, lineno):
    """Parse ``{a="b",...}`` starting at s[i] == '{'; return (labels, index after '}')."""
    assert s[i] == "{"
    i += 1
    labels = {}
    while True:
        if i < len(s) and s[i] == "}":
            return labels, i + 1
        m = LABEL_NAME_RE.match(s, i)
        if not m:
            raise PromFormatError(f"line {lineno}: bad label name at {s[i:i + 20]!r}")
        name = m.group(0)
        i = m.end()
        if s[i:i + 2] != '="':
            raise PromFormatError(f"line {lineno}: expected =\" after label {name!r}")
        i += 2
        value = []
        while True:
            if i >= len(s):
                raise PromFormatError(f"line {lineno}: unterminated label value")
            c = s[i]
            if c == "\\":
                nxt = s[i + 1:i + 2]
                if nxt == "n":
                    value.append("\n")
                elif nxt in ("\\", '"'):
                    value.append(nxt)
                else:
                    raise PromFormatError(f"line {lineno}: bad escape \\{nxt}")
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise PromFormatError(f"line {lineno}: newline in label value")
            else:
                value.append(c)
                i += 1
        if name in labels:
            raise PromFormatError(f"line {lineno}: duplicate label {name!r}")
        labels[name] = "".join(value)
        if i < len(s) and s[i] == ",":
            i += 1
            continue
        if i < len(s) and s[i] == "}":
            return labels, i + 1
        raise PromFormatError(f"line {lineno}: expected , or }} in labels")


def _family_of(sample_name, families):
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            base = sample_name[: -len(suffix)]
            fam = families.get(base)
            if fam is not None and fam.type in ("histogram", "summary"):
                return fam
    return families.get(sample_name)


def parse_prometheus(text):
    """Parse Prometheus text exposition format 0.0.4, strictly.

    Returns {family name: Family}. Raises PromFormatError for: a missing final
    newline, malformed lines, names or label values, TYPE after a family's
    samples or twice, HELP twice, a family's samples not contiguous, a duplicate
    series, samples without a TYPE line (the sidecar always declares types),
    histogram families missing _sum/_count/+Inf or with decreasing buckets or
    +Inf != _count, negative counters.
    """
    if text and not text.endswith("\n"):
        raise PromFormatError("the exposition does not end with a newline")
    families = {}
    seen_series = set()
    closed_families = set()
    current = None
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if line == "":
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                kind, name = parts[1], parts[2]
                if not METRIC_NAME_RE.fullmatch(name):
                    raise PromFormatError(f"line {lineno}: bad metric name {name!r}")
                fam = families.setdefault(name, Family(name))
                if name in closed_families or (fam.samples and kind == "TYPE"):
                    raise PromFormatError(f"line {lineno}: {kind} for {name} after its samples")
                if kind == "HELP":
                    if fam.help is not None:
                        raise PromFormatError(f"line {lineno}: second HELP for {name}")
                    fam.help = parts[3] if len(parts) > 3 else ""
                else:
                    t = parts[3] if len(parts) > 3 else ""
                    if t not in FAMILY_TYPES:
                        raise PromFormatError(f"line {lineno}: bad type {t!r}")
                    if fam.type is not None:
                        raise PromFormatError(f"line {lineno}: second TYPE for {name}")
                    fam.type = t
                if current is not None and current is not fam:
                    closed_families.add(current.name)
                current = fam
            continue  # other comments are allowed
        m = METRIC_NAME_RE.match(line)
        if not m:
            raise PromFormatError(f"line {lineno}: bad sample line {line!r}")
        sname = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i, lineno)
        if i >= len(line) or line[i] != " ":
            raise PromFormatError(f"line {lineno}: expected a space before the value: {line!r}")
        rest = line[i + 1:].split(" ")
        if not 1 <= len(rest) <= 2 or rest[0] == "":
            raise PromFormatError(f"line {lineno}: bad value/timestamp in {line!r}")
        value = _parse_float(rest[0], lineno)
        if len(rest) == 2 and not re.fullmatch(r"-?\d+", rest[1]):
            raise PromFormatError(f"line {lineno}: bad timestamp {rest[1]!r}")
        fam = _family_of(sname, families)
        if fam is None or fam.type is None:
            raise PromFormatError(f"line {lineno}: sample {sname} without a TYPE line")
        if fam.name in closed_families:
            raise PromFormatError(f"line {lineno}: samples of {fam.name} are not contiguous")
        if current is not fam:
            if current is not None:
                closed_families.add(current.name)
            current = fam
        key = (sname, tuple(sorted(labels.items())))
        if key in seen_series:
            raise PromFormatError(f"line {lineno}: duplicate series {key}")
        seen_series.add(key)
        if fam.type == "counter" and not (value >= 0):
            raise PromFormatError(f"line {lineno}: counter {sname} is {value}")
        if fam.type == "histogram" and sname == fam.name:
            raise PromFormatError(f"line {lineno}: bare sample {sname} in a histogram family")
        fam.samples.append((sname, labels, value))
    for fam in families.values():
        if fam.type == "histogram":
            _check_histogram(fam)
    return families


def _check_histogram(fam):
    groups = {}
    for sname, labels, value in fam.samples:
        base = {k: v for k, v in labels.items() if k != "le"}
        key = tuple(sorted(base.items()))
        g = groups.setdefault(key, {"buckets": [], "sum": None, "count": None})
        if sname == fam.name + "_bucket":
            if "le" not in labels:
                raise PromFormatError(f"{fam.name}: bucket without le")
            g["buckets"].append((_parse_float(labels["le"], 0), value))
        elif sname == fam.name + "_sum":
            g["sum"] = value
        elif sname == fam.name + "_count":
            g["count"] = value
    for key, g in groups.items():
        if g["sum"] is None or g["count"] is None:
            raise PromFormatError(f"{fam.name}{dict(key)}: missing _sum or _count")
        les = [le for le, _ in g["buckets"]]
        if not les or les[-1] != math.inf:
            raise PromFormatError(f"{fam.name}{dict(key)}: no +Inf bucket last")
        if les != sorted(les) or len(set(les)) != len(les):
            raise PromFormatError(f"{fam.name}{dict(key)}: le not increasing: {les}")
        counts = [c for _, c in g["buckets"]]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise PromFormatError(f"{fam.name}{dict(key)}: buckets not cumulative: {counts}")
        if counts[-1] != g["count"]:
            raise PromFormatError(f"{fam.name}{dict(key)}: +Inf bucket {counts[-1]} != _count {g['count']}")


def series(families, sample_name, **labels):
    """The values of ``sample_name`` samples whose labels include ``labels``."""
    out = []
    for fam in families.values():
        for sname, lab, value in fam.samples:
            if sname == sample_name and all(lab.get(k) == v for k, v in labels.items()):
                out.append((lab, value))
    return out


def one(families, sample_name, **labels):
    """The single value of a series (AssertionError if not exactly one)."""
    found = series(families, sample_name, **labels)
    assert len(found) == 1, f"{sample_name}{labels}: {found}"
    return found[0][1]


def histogram_buckets(families, name, **labels):
    """[(le, cumulative count)] of one histogram series."""
    return sorted(
        (_parse_float(lab["le"], 0), v) for lab, v in series(families, name + "_bucket", **labels)
    )


# ---------------------------------------------------------------------------
# Histogram summaries (JSON)
# ---------------------------------------------------------------------------

BUCKET_BOUNDS_NS = [
    10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000,
    1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000,
]


def bucket_index(ns):
    """The index of the bucket a value lands in: (bounds[i-1], bounds[i]]."""
    for i, bound in enumerate(BUCKET_BOUNDS_NS):
        if ns <= bound:
            return i
    return len(BUCKET_BOUNDS_NS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
