"""A Python client for ringstore's REST API, standard library only.

- ``Client``: get / put / delete / scan / batch / txn / delete_prefix,
  watches that resume where they left off, and locks.
- ``Lock``: a context manager that acquires a lock, renews its lease in the
  background and exposes its fencing token; writes made with
  ``lock.put(...)`` carry the token, so a holder that lost the lock (paused,
  partitioned, lease ended) is refused by the store instead of overwriting
  the next holder's work.

Every write carries an ``Idempotency-Key`` drawn once per call and kept
across tries: a try whose answer is lost (dead node, 503) is sent again to
the next endpoint and still applies once.
"""

import base64
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

__all__ = [
    "Client",
    "Lock",
    "Event",
    "Watch",
    "RingstoreError",
    "PreconditionFailed",
    "LockHeld",
    "NotHolder",
    "Compacted",
    "Unavailable",
    "Unauthorized",
    "Forbidden",
    "RateLimited",
]

TRIES_MAX = 6
RETRY_PAUSE_S = 0.1


class RingstoreError(Exception):
    """An answer other than success: ``status``, ``code`` and ``message``
    from the server's JSON error."""

    def __init__(self, status, code, message, body=None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body or {}


class PreconditionFailed(RingstoreError):
    """``if_version`` was not met."""


class LockHeld(RingstoreError):
    """Another session holds the lock (after the wait, if any)."""


class NotHolder(RingstoreError):
    """This session and token no longer hold the lock: its lease ended."""


class Compacted(RingstoreError):
    """A watch position older than a shard keeps: read again, watch anew."""


class Unavailable(RingstoreError):
    """No node answered within the deadline."""


class Unauthorized(RingstoreError):
    """No token, or one the cluster does not know (401)."""


class Forbidden(RingstoreError):
    """The token lacks the scope, or the key is outside its prefix (403)."""


class RateLimited(RingstoreError):
    """Over this client's rate limit (429); the answer's Retry-After says when."""


_ERRORS = {
    "precondition_failed": PreconditionFailed,
    "lock_held": LockHeld,
    "not_holder": NotHolder,
    "compacted": Compacted,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "rate_limited": RateLimited,
}


def _error(status, body):
    try:
        doc = json.loads(body)
        err = doc.get("error", {})
        code, message = err.get("code", "unknown"), err.get("message", "")
    except (ValueError, AttributeError):
        doc, code, message = {}, "unknown", body.decode("utf-8", "replace")
    return _ERRORS.get(code, RingstoreError)(status, code, message, doc)


def _quote(key, safe="/"):
    return urllib.parse.quote(key, safe=safe)


class Event:
    """One change from a watch: ``kind`` (put, delete, expire), ``key``,
    ``value`` (bytes, puts only), ``version`` and ``position`` (resume a
    later watch after this event with ``start=position``)."""

    __slots__ = ("kind", "key", "value", "version", "position")

    def __init__(self, line):
        self.kind = line["type"]
        self.key = line.get("key")
        if self.key is None and "key_b64" in line:
            self.key = base64.b64decode(line["key_b64"]).decode("utf-8", "replace")
        if "value" in line:
            self.value = line["value"].encode()
        elif "value_b64" in line:
            self.value = base64.b64decode(line["value_b64"])
        else:
            self.value = None
        self.version = line.get("version", 0)
        self.position = line["position"]

    def __repr__(self):
        return f"Event({self.kind} {self.key!r} v{self.version} @ {self.position})"


class Watch:
    """Changes as ``Event``s, for as long as it is iterated. A broken
    stream is resumed, on the next endpoint, from the last position seen:
    no change is missed or repeated. ``position`` is where the stream is
    (set once the server answered; resume a later watch from it).
    Raises ``Compacted`` when the position is older than a shard keeps:
    read the keys again and start a new watch. ``close()`` ends it."""

    def __init__(self, client, path, start):
        self.client, self.path, self.position = client, path, start
        self.started = threading.Event()
        self._closed = threading.Event()
        self._response = None

    def close(self):
        self._closed.set()
        r = self._response
        if r is not None:
            try:
                r.close()
            except OSError:
                pass

    def __iter__(self):
        failures = 0
        while not self._closed.is_set():
            sep = "&" if "?" in self.path else "?"
            path = self.path + (f"{sep}from={self.position}" if self.position else "")
            url = self.client._endpoint(rotate=failures > 0) + path
            try:
                # A quiet stream still sends a progress line every 10 s.
                req = urllib.request.Request(url)
                if self.client.token:
                    req.add_header("Authorization", f"Bearer {self.client.token}")
                with urllib.request.urlopen(req, timeout=30, context=self.client._tls) as r:
                    self._response, failures = r, 0
                    for raw in r:
                        line = json.loads(raw)
                        self.position = line.get("position", self.position)
                        self.started.set()
                        kind = line.get("type")
                        if kind in ("put", "delete", "expire"):
                            yield Event(line)
                        elif kind == "compacted":
                            raise Compacted(410, "compacted", line.get("reason", ""), line)
                        elif kind == "closed":
                            break
                        if self._closed.is_set():
                            return
            except urllib.error.HTTPError as e:
                if e.code != 503:
                    raise _error(e.code, e.read())
                failures += 1
            except (urllib.error.URLError, OSError, ValueError):
                if self._closed.is_set():
                    return
                failures += 1
            finally:
                self._response = None
            if failures > 20:
                raise Unavailable(503, "unavailable", "no node would serve the watch")
            if failures:
                time.sleep(0.2)


class Client:
    """Talks to any node of a cluster (each forwards to the shard's leader)
    and moves to the next endpoint when one does not answer.

    ``endpoints``: base URLs such as ``http://127.0.0.1:8080`` (default: the
    ``RINGSTORE_ENDPOINTS`` environment variable, comma-separated, or
    ``ringstore dev``'s first node). ``timeout``: each call's deadline in
    seconds, which the server is told too. ``token``: a bearer token, for
    nodes run with ``--auth-tokens`` (default: ``RINGSTORE_TOKEN``).
    ``ca``: the cluster CA's PEM file, for ``https://`` endpoints (default:
    ``RINGSTORE_CA``); only that CA is trusted, not the system's.
    """

    def __init__(self, endpoints=None, timeout=5.0, token=None, ca=None):
        if endpoints is None:
            endpoints = os.environ.get("RINGSTORE_ENDPOINTS", "http://127.0.0.1:8080").split(",")
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("RINGSTORE_TOKEN")
        ca = ca if ca is not None else os.environ.get("RINGSTORE_CA")
        self._tls = ssl.create_default_context(cafile=ca) if ca else None
        self._next = 0
        self._lock = threading.Lock()

    # -- transport ---------------------------------------------------------

    def _endpoint(self, rotate=False):
        with self._lock:
            if rotate:
                self._next += 1
            return self.endpoints[self._next % len(self.endpoints)]

    def _call(self, method, path, body=None, content_type=None, headers=None, timeout=None, deadline_header=True):
        """Sends until an answer other than 503 arrives, rotating endpoints,
        with one Idempotency-Key for every try. Returns (status, headers, body)."""
        timeout = self.timeout if timeout is None else timeout
        until = time.monotonic() + timeout
        key = uuid.uuid4().hex
        last = "no try was made"
        for tried in range(TRIES_MAX):
            left = until - time.monotonic()
            if left <= 0:
                break
            url = self._endpoint(rotate=tried > 0) + path
            req = urllib.request.Request(url, data=body, method=method)
            req.add_header("Idempotency-Key", key)
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            if deadline_header:
                req.add_header("X-Request-Timeout", f"{max(100, min(60000, int(left * 1000)))}ms")
            if content_type:
                req.add_header("Content-Type", content_type)
            for k, v in (headers or {}).items():
                req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=left, context=self._tls) as r:
                    return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                data = e.read()
                if e.code != 503:
                    return e.code, e.headers, data
                last = f"503: {data[:200]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(min(RETRY_PAUSE_S, max(0.0, until - time.monotonic())))
        raise Unavailable(503, "unavailable", f"outcome unknown after retries with one idempotency key: {last}")

    def _json(self, method, path, doc=None, timeout=None, ok=(200,)):
        body = None if doc is None else json.dumps(doc).encode()
        status, _, data = self._call(method, path, body, "application/json" if body else None, timeout=timeout)
        if status not in ok:
            raise _error(status, data)
        return status, json.loads(data) if data else {}

    # -- keys --------------------------------------------------------------

    def get(self, key):
        """``(value, version)`` of ``key`` (a linearizable read), or ``None``."""
        status, _, data = self._call("GET", f"/v1/kv/{_quote(key)}?meta=true")
        if status == 404:
            return None
        if status != 200:
            raise _error(status, data)
        doc = json.loads(data)
        value = doc["value"].encode() if "value" in doc else base64.b64decode(doc.get("value_b64", ""))
        return value, doc["version"]

    def put(self, key, value, if_version=None, ttl=None, fence=None):
        """Writes ``value`` (bytes or str) and returns its version. Only over
        version ``if_version`` when given (0: only if absent); ``ttl`` in
        seconds; ``fence``: ``(lock name, token)`` of the lock guarding it."""
        if isinstance(value, str):
            value = value.encode()
        headers = {}
        if if_version == 0:
            headers["If-None-Match"] = "*"
        elif if_version is not None:
            headers["If-Match"] = f'"{if_version}"'
        if fence is not None:
            headers["Fencing-Token"] = f"{_quote(fence[0], safe='')}:{fence[1]}"
        path = f"/v1/kv/{_quote(key)}"
        if ttl is not None:
            path += f"?ttl_ms={int(ttl * 1000)}"
        status, _, data = self._call("PUT", path, value, "application/octet-stream", headers)
        if status != 200:
            raise _error(status, data)
        return json.loads(data)["version"]

    def delete(self, key, if_version=None):
        """Deletes ``key``; ``False`` if it did not exist."""
        headers = {"If-Match": f'"{if_version}"'} if if_version is not None else {}
        status, _, data = self._call("DELETE", f"/v1/kv/{_quote(key)}", headers=headers)
        if status == 404:
            return False
        if status != 200:
            raise _error(status, data)
        return True

    def scan(self, prefix="", limit=1000):
        """Every ``(key, value, version)`` under ``prefix``, in key order."""
        out, cursor = [], None
        while True:
            q = {"prefix": prefix, "limit": str(min(limit, 1000))}
            if cursor:
                q["cursor"] = cursor
            _, doc = self._json("GET", "/v1/kv?" + urllib.parse.urlencode(q))
            for item in doc["items"]:
                out.append((item["key"], base64.b64decode(item.get("value_b64", "")), item["version"]))
            cursor = doc.get("next_cursor")
            if not cursor or len(out) >= limit:
                return out[:limit]

    def batch(self, ops):
        """Many puts, gets and deletes in one request (at most 1,000), each
        succeeding or failing alone. ``ops``: dicts such as
        ``{"op": "put", "key": "a", "value": "x"}``. Returns the server's
        per-item results, in order."""
        _, doc = self._json("POST", "/v1/kv:batch", {"ops": ops})
        return doc["results"]

    def delete_prefix(self, prefix):
        """Deletes every key under ``prefix`` (not empty) and returns how
        many. Not atomic: a key written under it meanwhile may stay."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        _, doc = self._json("DELETE", "/v1/kv?" + urllib.parse.urlencode({"prefix": prefix}))
        return doc["deleted"]

    def txn(self, compare=(), then=(), otherwise=()):
        """If every compare holds, runs ``then``, otherwise ``otherwise``,
        atomically on the keys' one shard (keys sharing a hash tag such as
        ``{user42}/a`` and ``{user42}/b`` are on one). Compares are dicts such
        as ``{"key": "a", "version": 3}``, ``{"key": "a", "value": "x",
        "cmp": "!="}`` or ``{"key": "a", "exists": False}``; ops as in
        ``batch``. Returns ``(succeeded, results)``."""
        doc = {"compare": list(compare), "then": list(then), "else": list(otherwise)}
        _, answer = self._json("POST", "/v1/txn", doc)
        return answer["succeeded"], answer["results"]

    # -- watches -----------------------------------------------------------

    def watch(self, key=None, prefix=None, start=None):
        """A ``Watch`` of ``key`` (or of every key under ``prefix``), from
        ``start`` (a position an earlier event carried) or from now.
        Iterate it for ``Event``s."""
        if (key is None) == (prefix is None):
            raise ValueError("watch a key or a prefix")
        if key is not None:
            path = f"/v1/watch/{_quote(key)}"
        else:
            path = "/v1/watch?" + urllib.parse.urlencode({"prefix": prefix})
        return Watch(self, path, start)

    # -- locks -------------------------------------------------------------

    def lock(self, name, ttl=10.0, wait=5.0, owner=None):
        """A ``Lock`` on ``name`` with a lease of ``ttl`` seconds, waiting up
        to ``wait`` seconds in the lock's queue. Use it with ``with``."""
        return Lock(self, name, ttl, wait, owner)


class Lock:
    """A held lock, as a context manager: acquires on enter (waiting in the
    lock's FIFO queue), renews the lease every third of its ttl in a
    background thread, releases on exit.

    ``token``: the fencing token, which only grows per lock name. Pass it
    with writes (``lock.put``), so the store refuses a write from a holder
    whose lease ended and whose lock went to someone else since.
    ``lost``: a ``threading.Event`` set if a renewal found the lease gone;
    check it (or use fenced writes) before acting on the lock.
    Re-entering (``with lock:`` again in the same holder) counts holds.
    """

    def __init__(self, client, name, ttl, wait, owner):
        self.client, self.name, self.ttl, self.wait = client, name, ttl, wait
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}"
        self.session, self.token, self.holds = None, None, 0
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer = None

    def _path(self, action):
        return f"/v1/locks/{_quote(self.name)}/{action}"

    def acquire(self):
        body = {"owner": self.owner, "ttl_ms": int(self.ttl * 1000), "wait_ms": int(self.wait * 1000)}
        if self.session:
            body["session"] = self.session
        _, doc = self.client._json("POST", self._path("acquire"), body, timeout=self.wait + 5)
        self.session = doc.get("session", self.session)
        self.token, self.holds = doc["token"], doc["hold_count"]
        self.lost.clear()
        if self._renewer is None:
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew, name=f"ringstore-lock-{self.name}", daemon=True)
            self._renewer.start()
        return self

    def _renew(self):
        while not self._stop.wait(self.ttl / 3):
            try:
                body = {"session": self.session, "token": self.token, "ttl_ms": int(self.ttl * 1000)}
                self.client._json("POST", self._path("refresh"), body)
            except NotHolder:
                self.lost.set()
                return
            except RingstoreError:
                continue  # no node answered this time: the lease still runs

    def release(self):
        """Drops one hold; the lock is free when none remain."""
        body = {"session": self.session, "token": self.token}
        try:
            _, doc = self.client._json("POST", self._path("release"), body)
            self.holds = doc.get("hold_count", 0)
        except NotHolder:
            self.holds = 0
            self.lost.set()
        if self.holds == 0:
            self._stop.set()
            if self._renewer is not None:
                self._renewer.join(timeout=self.ttl)
                self._renewer = None
            self.session = None

    def put(self, key, value, **kw):
        """A write fenced by this lock's token."""
        return self.client.put(key, value, fence=(self.name, self.token), **kw)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
