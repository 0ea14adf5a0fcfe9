"""An httpx transport for HTTP/1.1 on plain sockets, with httptools' C parser reading the
answers: the adapters' wire in production.

The adapters speak httpx (``Request``, ``Response``, its exceptions, and ``MockTransport`` in
tests); only the bytes on the wire go through here. CPU per call to the simulator on the bench
machine, in a loop of calls: httpx's own transport (httpcore over h11) about 430 µs,
``http.client`` behind this same interface about 260 µs (it parses headers with the ``email``
package), this about 120 µs. The worker makes one or two such calls per job step, all under
one GIL, so that difference is worker throughput.

Keep-alive: one stack of idle connections per origin, shared by the worker's threads. A
connection serves one request at a time and goes back on the stack once its answer has been
read whole and the server did not ask to close. One the server closed while it sat idle is
noticed before reuse (its socket polls readable) and dropped. One idle longer than
``max_idle_s`` (4 s, under the 5 s idle limit of uvicorn's and Node's servers), or than the
server's ``Keep-Alive: timeout=`` less a second, is dropped unused: a server closing it just
as a request goes out makes a paid submission's outcome unknown, though it never saw it.
Failures are httpx's exceptions, so callers handle them as before:

    UnsupportedProtocol             not http or https
    ConnectTimeout / ConnectError   the connection (or its TLS handshake) could not be made
    WriteTimeout / WriteError       the request could not be sent whole: the server cannot
                                    have acted on it
    ReadTimeout                     the request was sent; no progress within the read
                                    timeout, or no whole answer by the request's deadline
    ReadError                       the request was sent, then the connection broke
    RemoteProtocolError             the answer was not HTTP/1.1, or ended early

So a failure says whether the server may have acted on the request: the Connect* and Write*
ones never; the Read* ones and RemoteProtocolError may (the adapters must not repeat a paid
submission blindly after them). A timeout mapping may carry ``total``: the most seconds the
whole exchange may take once connected (sending and the whole answer), so that a server
trickling its answer cannot hold a call past what the job chain's lease allows for it.

Proxies and trust, as httpx has them by default: ``HTTP_PROXY`` / ``HTTPS_PROXY`` /
``ALL_PROXY`` / ``NO_PROXY`` (:mod:`orchestrator.backends.proxy`) and ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` (else certifi's bundle; ``httpx.create_ssl_context``). Through a proxy, an
http origin's requests go to the proxy with the absolute URL as their target; an https origin
is reached by ``CONNECT host:port``, then TLS with the origin's name inside that tunnel. A
proxy URL's ``user:password@`` goes as ``Proxy-Authorization: Basic``. Kept-alive connections
are pooled per (origin, proxy). Which proxy an origin takes is decided once and kept; with no
proxy in the environment nothing is asked at all. The classification above holds through a
proxy: not reaching the proxy, the proxy refusing the CONNECT, and the tunnel's TLS
handshake are Connect* failures (nothing was sent to the origin); after that, the same as
direct.

The adapters call :meth:`Http11Transport.exchange` (the :class:`Wire` seam): bytes in, a
:class:`Reply` out, without building httpx's ``Request`` and ``Response``: a chat completion
through an adapter to the simulator took 209-244 µs of CPU with them, 136-147 µs without. Any
other httpx transport (``MockTransport`` in tests) becomes a Wire through :class:`HttpxWire`,
so tests still see httpx requests.
"""

from __future__ import annotations

import functools
import json
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
import httpx

from orchestrator.backends.heads import tolerant_head
from orchestrator.backends.proxy import Proxy, ProxyRules, open_connection, open_tunnel
from orchestrator.runtime.sockets import has_input

_Origin = tuple[str, str, int]
_PoolKey = _Origin | tuple[_Origin, Proxy]  # direct: the origin; proxied: (origin, proxy)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RECV = 65536
# the largest answer read (head and body): ten base64 images of several MB each fit. An
# answer is held about three times over while it is read, joined and parsed (a 256 MiB one
# took a worker to 856 MB), and each of a worker's threads may be reading one
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# the most read while a head the parser refused is looked for again (h11 allows 16 KiB)
MAX_BENT_HEAD_BYTES = 64 * 1024


class _Answer:
    """httptools' callbacks: the status line's headers and body of one answer (a 1xx
    interim answer is skipped). Whatever follows the final answer on the connection (bytes
    past its Content-Length, a second answer) is no part of it: the parser is fed the
    bytes as they came, so it may go on to read them, and they must not replace the answer
    nor fail it; ``extra`` says they came (the connection is then not reused)."""

    __slots__ = ("body", "complete", "extra", "headers", "headers_done", "keep_alive",
                 "parser", "status")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.extra = False
        self.keep_alive = False
        self.status = 0
        self.parser: Any = None

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
            return
        self.headers, self.body, self.headers_done = [], [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.headers_done = True
        # read while the parser has them: a later message's would replace them
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True

    def ends_at_close(self) -> bool:
        """The body runs to the end of the connection (no length, not chunked)."""
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names


Headers = Sequence[tuple[bytes, bytes]]
Timeouts = Mapping[str, float | None]  # httpx's Timeout.as_dict(): connect, read, write, pool


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed request URL with what the wire needs from it, built once per URL."""

    url: httpx.URL
    origin: _Origin | None  # None: not http or https
    host: bytes  # the Host header
    path: bytes  # path and query, as sent


@functools.lru_cache(maxsize=4096)
def target(url: str) -> Target:
    """Parsing costs about 30 µs a call, and most calls go to a few URLs (each backend's
    submit endpoint, a prediction polled several times)."""
    return _target_of(httpx.URL(url))


def _target_of(url: httpx.URL) -> Target:
    scheme = url.scheme
    origin = ((scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
              if scheme in _DEFAULT_PORTS else None)
    return Target(url, origin, url.netloc, url.raw_path)


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer as the adapters read it: status, header pairs as sent, the whole body."""

    status_code: int
    headers: Headers
    content: bytes

    def json(self) -> Any:
        """The body as JSON (ValueError if it is not)."""
        return json.loads(self.body())

    def body(self) -> bytes:
        """The body, with a ``gzip`` or ``deflate`` coding undone: a server (or a cache in
        front of it) may compress its answer though asked for ``identity``, and a paid
        answer left compressed is unreadable. Inflated up to MAX_ANSWER_BYTES, as much as
        is read off the wire (ValueError past it, or for data that does not inflate);
        ``identity`` in a list of codings is none (``gzip, identity``); another coding, or
        two, is left as it came."""
        codings = [c for c in (self.header("Content-Encoding") or "").lower().split(",")
                   if c.strip() not in ("", "identity")]
        coding = codings[0].strip() if len(codings) == 1 else ""
        if coding not in ("gzip", "x-gzip", "deflate"):
            return self.content
        try:
            try:
                return _inflate(self.content, raw=False)
            except zlib.error:
                if coding != "deflate":
                    raise
                return _inflate(self.content, raw=True)  # without zlib's header, as browsers
        except zlib.error as exc:
            raise ValueError(f"the {coding} body does not inflate ({exc})") from None
        except OverflowError:
            raise ValueError(f"the {coding} body inflates past "
                             f"{MAX_ANSWER_BYTES // 2**20} MiB") from None

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (any case), or None."""
        key = name.lower().encode("ascii")
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


class Wire(Protocol):
    """The adapters' seam: one request, one whole answer, httpx's exceptions for failures.
    ``headers`` are the request's own; the wire adds Host and Content-Length."""

    def exchange(self, method: str, to: Target, headers: Headers, body: bytes,
                 timeout: Timeouts) -> Reply: ...


def _inflate(data: bytes, *, raw: bool) -> bytes:
    """``data`` inflated: gzip members one after another (a server may flush each part of
    an answer as a member of its own) or one zlib stream (``raw``: deflate without zlib's
    header). NUL bytes padding the end are no member. OverflowError past MAX_ANSWER_BYTES;
    zlib.error for data that does not inflate. A last member cut short gives what it holds
    (whether that is a whole answer, the JSON reading it tells)."""
    out = bytearray()
    rest = data
    while rest:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS if raw else 32 + zlib.MAX_WBITS)
        out += inflate.decompress(rest, MAX_ANSWER_BYTES + 1 - len(out))
        if inflate.unconsumed_tail or len(out) > MAX_ANSWER_BYTES:
            raise OverflowError
        if raw or not inflate.eof:
            break
        rest = inflate.unused_data.rstrip(b"\0")
    return bytes(out)


class HttpxWire:
    """Any httpx transport as a :class:`Wire` (tests' ``MockTransport`` sees httpx requests)."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport

    def exchange(self, method: str, to: Target, headers: Headers, body: bytes,
                 timeout: Timeouts) -> Reply:
        resp = self.transport.handle_request(httpx.Request(
            method, to.url, headers=list(headers), content=body,
            extensions={"timeout": dict(timeout)}))
        resp.read()
        # httpx has undone the body's coding already: its header no longer says what it is
        headers = [(k, v) for k, v in resp.headers.raw if k.lower() != b"content-encoding"]
        return Reply(resp.status_code, headers, resp.content)


def wire_for(transport: httpx.BaseTransport) -> Wire:
    return transport if isinstance(transport, Http11Transport) else HttpxWire(transport)


class Http11Transport(httpx.BaseTransport):
    """HTTP/1.1 with per-origin keep-alive (``max_idle`` idle connections per origin), through
    the environment's proxies and trust store unless ``trust_env`` is False (as httpx)."""

    def __init__(self, *, max_idle: int = 64, max_idle_s: float = 4.0,
                 ssl_context: ssl.SSLContext | None = None, trust_env: bool = True) -> None:
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._ssl = ssl_context
        self._trust_env = trust_env
        # per pool key, (connection, monotonic time after which it is not reused), newest last
        self._idle: dict[_PoolKey, deque[tuple[socket.socket, float]]] = {}
        self._lock = threading.Lock()
        # None: no proxy configured, every origin direct without asking
        self._proxies = ProxyRules.from_environment() if trust_env else None
        self._routes: dict[_Origin, Proxy | None] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """httpx's interface (an ``httpx.Client`` over this wire): its request as it is."""
        try:
            reply = self._send(request.method, _target_of(request.url), request.headers.raw,
                               request.read(), request.extensions.get("timeout", {}))
        except httpx.RequestError as exc:
            exc.request = request
            raise
        return httpx.Response(reply.status_code, headers=reply.headers, content=reply.content,
                              extensions={"http_version": b"HTTP/1.1"}, request=request)

    def exchange(self, method: str, to: Target, headers: Headers, body: bytes,
                 timeout: Timeouts) -> Reply:
        """The :class:`Wire` seam: ``headers`` plus Host and Content-Length."""
        own = [(b"Host", to.host), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            own.append((b"Content-Length", b"%d" % len(body)))
        return self._send(method, to, own, body, timeout)

    def _send(self, method: str, to: Target, headers: Headers, body: bytes,
              timeout: Timeouts) -> Reply:
        if to.origin is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {to.url.scheme!r}")
        origin = to.origin
        proxy = None if self._proxies is None else self._proxy_for(origin)
        if proxy is None:
            key: _PoolKey = origin
            head = _head(method, to.path, headers)
            sock = self._reuse(origin) or self._connect(origin, timeout.get("connect"))
        else:
            key = (origin, proxy)
            if origin[0] == "http":  # to the proxy, naming the whole URL
                target_url = b"http://%s%s" % (to.host, to.path)
                extra = [] if proxy.authorization is None else [
                    (b"Proxy-Authorization", proxy.authorization)]
                head = _head(method, target_url, [*headers, *extra])
            else:  # inside a CONNECT tunnel: as direct
                head = _head(method, to.path, headers)
            sock = self._reuse(key) or self._connect_via(proxy, origin, timeout.get("connect"))
        read = timeout.get("read")
        total = timeout.get("total")
        deadline = None if total is None else time.monotonic() + total
        write = timeout.get("write", read)
        if total is not None:
            write = total if write is None else min(write, total)
        try:
            sock.settimeout(write)  # sendall's whole duration, since Python 3.5
            sock.sendall(head + body)
        except OSError as exc:  # TimeoutError among them: not sent whole, so not acted on
            sock.close()
            if isinstance(exc, TimeoutError):
                raise httpx.WriteTimeout("the request could not be sent in time") from None
            raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
        try:
            answer = _read_answer(sock, read, deadline, head_only=method == "HEAD")
        except TimeoutError as exc:
            sock.close()
            raise httpx.ReadTimeout(f"no answer within the read timeout ({exc})") from None
        except httptools.HttpParserError as exc:
            sock.close()
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from None
        except httpx.RemoteProtocolError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from None
        if answer.complete and answer.keep_alive and not answer.extra:
            self._park(key, sock, self._idle_limit(answer.headers))
        else:
            sock.close()
        return Reply(answer.status, answer.headers, b"".join(answer.body))

    def _proxy_for(self, origin: _Origin) -> Proxy | None:
        """The environment's proxy for ``origin``, decided once (a miss costs a pattern walk)."""
        try:
            return self._routes[origin]
        except KeyError:
            assert self._proxies is not None
            proxy = self._routes[origin] = self._proxies.proxy_for(origin)
            return proxy

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for stack in idle.values():
            for sock, _ in stack:
                sock.close()

    # -- connections ---------------------------------------------------------------------------
    def _connect(self, origin: _Origin, connect_timeout: float | None) -> socket.socket:
        scheme, host, port = origin
        sock = open_connection(host, port, connect_timeout)
        return sock if scheme != "https" else self._tls(sock, host, port)

    def _connect_via(self, proxy: Proxy, origin: _Origin, connect_timeout: float | None
                     ) -> socket.socket:
        """A connection to ``proxy`` for ``origin``: as it is for http; for https, a CONNECT
        tunnel with TLS to the origin inside. Every failure here is a Connect* one."""
        scheme, host, port = origin
        if scheme != "https":
            return open_connection(proxy.host, proxy.port, connect_timeout, "proxy ")
        return self._tls(open_tunnel(proxy, host, port, connect_timeout), host, port)

    def _tls(self, sock: socket.socket, host: str, port: int) -> socket.socket:
        if self._ssl is None:  # loading the trust store costs milliseconds: once
            self._ssl = httpx.create_ssl_context(trust_env=self._trust_env)
        try:
            return self._ssl.wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"no TLS handshake with {host}:{port} in time") from None
        except OSError as exc:  # ssl.SSLError among them: an untrusted certificate
            sock.close()
            raise httpx.ConnectError(f"TLS with {host}:{port} failed "
                                     f"({type(exc).__name__})") from None

    def _idle_limit(self, headers: Sequence[tuple[bytes, bytes]]) -> float:
        """How long a connection may sit idle and still be reused: ``max_idle_s``, or the
        server's ``Keep-Alive: timeout=N`` less a second if that is sooner."""
        limit = self._max_idle_s
        for name, value in headers:
            if name.lower() == b"keep-alive":
                for part in value.split(b","):
                    k, _, v = part.strip().partition(b"=")
                    if k.strip().lower() == b"timeout":
                        try:
                            hint = float(v.strip().strip(b'"'))
                        except ValueError:
                            continue
                        if hint >= 0:  # NaN compares false: ignored
                            limit = min(limit, hint - 1.0)
        return limit

    def _reuse(self, key: _PoolKey) -> socket.socket | None:
        stack = self._idle.get(key)
        while stack:
            try:
                sock, until = stack.pop()
            except IndexError:  # another thread took the last one
                return None
            # idle not too long, and quiet: the server has not closed it, nor is about to
            if time.monotonic() < until and not has_input(sock):
                return sock
            sock.close()
        return None

    def _park(self, key: _PoolKey, sock: socket.socket, idle_s: float) -> None:
        if idle_s <= 0:
            sock.close()
            return
        stack = self._idle.get(key)
        if stack is None:
            with self._lock:
                stack = self._idle.setdefault(key, deque())
        now = time.monotonic()
        while stack:  # the oldest first: those idle too long are never reused
            try:
                oldest, until = stack[0]
            except IndexError:
                break
            if until > now:
                break
            try:
                stack.remove((oldest, until))
            except ValueError:  # another thread took it
                continue
            oldest.close()
        if len(stack) >= self._max_idle:
            sock.close()
        else:
            stack.append((sock, now + idle_s))


def _head(method: str, path: bytes, headers: Headers) -> bytes:
    """The request line and headers."""
    lines = [b"%s %s HTTP/1.1" % (method.encode("ascii"), path)]
    lines += [b"%s: %s" % pair for pair in headers]
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _read_answer(sock: socket.socket, read: float | None, deadline: float | None, *,
                 head_only: bool) -> _Answer:
    """Read one whole answer (for HEAD, its head) with ``read`` seconds for each piece and
    everything by ``deadline`` (monotonic; TimeoutError); raise RemoteProtocolError if the
    connection ends before the answer does, the server switches protocols (a 101), or the
    answer grows past MAX_ANSWER_BYTES. A head the parser refuses is read once more as h11
    would read it (:func:`tolerant_head`); its connection is then not reused."""
    answer = _Answer()
    answer.parser = httptools.HttpResponseParser(answer)
    received = 0
    early: list[bytes] | None = []  # what came before the final head was parsed
    retelling = retold = False
    while not answer.complete:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the whole answer did not come by the request's deadline")
            sock.settimeout(left if read is None else min(read, left))
        else:
            sock.settimeout(read)
        data = sock.recv(_RECV)
        if not data:
            if answer.headers_done and answer.ends_at_close():
                break  # the end of the connection is the end of the body
            raise httpx.RemoteProtocolError("the server closed the connection before the "
                                            "answer ended")
        received += len(data)
        if received > MAX_ANSWER_BYTES:
            raise httpx.RemoteProtocolError(
                f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB")
        if early is None:
            _feed(answer, data)
        else:
            early.append(data)
            if not retelling:
                try:
                    _feed(answer, data)
                except httptools.HttpParserError:
                    retelling = True
            if retelling:
                told = tolerant_head(b"".join(early))
                if told is None:
                    if received > MAX_BENT_HEAD_BYTES:  # each look reads it all again
                        raise httpx.RemoteProtocolError(
                            f"a head the parser refused runs past "
                            f"{MAX_BENT_HEAD_BYTES // 1024} KiB")
                    continue  # the head goes on in what comes next
                answer = _Answer()
                answer.parser = httptools.HttpResponseParser(answer)
                early, retelling, retold = None, False, True
                _feed(answer, told)
            elif answer.headers_done and answer.status >= 200:
                early = None
        if head_only and answer.headers_done:
            answer.complete = True
    if retold:
        answer.keep_alive = False  # framing a proxy bent once may be bent worse next time
    return answer


def _feed(answer: _Answer, data: bytes) -> None:
    """Parse ``data`` into ``answer``; bytes that break the parser once the answer is whole
    are no part of it (a create answered, then bytes past its Content-Length, is no lost
    answer); ``HttpParserError`` before that."""
    try:
        answer.parser.feed_data(data)
    except httptools.HttpParserUpgrade:  # no HttpParserError: it would escape the call
        if not answer.complete:
            raise httpx.RemoteProtocolError("the server switched protocols") from None
        answer.extra = True
    except httptools.HttpParserError:
        if not answer.complete:
            raise
        answer.extra = True
