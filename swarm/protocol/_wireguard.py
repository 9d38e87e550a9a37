"""The WireGuard mesh, I/O part: the interface (kernel module, else a supervised
`wireguard-go` child), configured with `wg` and `ip`, and the MeshAgent that keeps its
peers equal to the mesh members in the peer view (decisions: swarm/protocol/_mesh.py).

    agent = MeshAgent(MeshOptions(...), data_dir)
    await agent.start()            # key, leftovers of a crashed run cleaned, interface up
    agent.member                   # what our advert carries
    await agent.run(view_source)   # reconcile until cancelled
    await agent.close()            # peers, interface, route and wireguard-go gone

Facts this relies on (shared/notes/wireguard.md): wireguard-go's UAPI sockets live in
/var/run/wireguard for every network namespace, so interface names are unique per key
machine-wide; `ip netns del` does not stop a wireguard-go, so its pid is kept in the data
dir and a crashed run's child is killed at the next start; `wg setconf` resets every
session, so peers change one `wg set` at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from swarm._errors import ConfigError, SwarmError
from swarm._types import PeerId
from swarm.protocol._advert import MeshMember
from swarm.protocol._mesh import (
    Desired,
    MeshSettings,
    RemovePeer,
    derive_address,
    desired_peers,
    interface_name,
    mesh_members,
    parse_dump,
    parse_prefix,
    plan,
    prefer_overlay,
    split_endpoint,
)
from swarm.protocol._view import PeerView

__all__ = ["INSTALL_HINT", "MeshAgent", "MeshOptions", "check_mesh_prerequisites",
           "load_or_create_key", "mesh_status"]

log = logging.getLogger("swarm.mesh")

INSTALL_HINT = "apt-get install wireguard-tools wireguard-go iproute2"
UAPI_DIR = Path("/var/run/wireguard")
STATE_FILE = "mesh.json"
KEY_FILE = "mesh.key"
# Seconds the end with the larger key waits for the other's handshake before its own.
POKE_DELAY = 0.3
# WireGuard's overhead on IPv6 underlay (40 IP + 8 UDP + 32 WireGuard).
OVERHEAD = 80


@dataclass(frozen=True, slots=True)
class MeshOptions:
    # Overlay prefix (IPv6); every member of one mesh uses the same.
    prefix: str
    # UDP port of the WireGuard socket (0: any free one).
    listen_port: int
    # Underlay "ip:port" others reach our WireGuard socket at ("" with behind_nat).
    endpoint: str
    # No endpoint is advertised: we dial out with keepalive (a host behind NAT).
    behind_nat: bool
    # Forward overlay traffic between members behind NAT (sets IPv6 forwarding here).
    relay: bool
    # Interface MTU; 0: the underlay's MTU minus 80.
    mtu: int = 0
    # Underlay address whose device's MTU counts (the advertised host).
    underlay_host: str = ""
    max_peers: int = 1024


def check_mesh_prerequisites() -> None:
    """Raise ConfigError naming everything `--mesh` lacks here, and how to get it."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (running as uid {os.geteuid()}): run swarm-node as root, "
                       "or give it CAP_NET_ADMIN")
    tools = [t for t in ("wg", "ip") if shutil.which(t) is None]
    kernel = Path("/sys/module/wireguard").exists()
    if not kernel and shutil.which("wireguard-go") is None:
        tools.append("wireguard-go (no kernel WireGuard module here)")
    if tools:
        missing.append(f"{', '.join(tools)}: {INSTALL_HINT}")
    if not kernel and not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (wireguard-go needs a TUN device)")
    if missing:
        raise ConfigError("--mesh needs " + "; ".join(missing))


def load_or_create_key(path: Path) -> tuple[bytes, bytes]:
    """(private, public) raw X25519 keys from `path` (base64, wg's format), created 0600."""
    if path.exists():
        try:
            private = base64.b64decode(path.read_text().strip(), validate=True)
            key = X25519PrivateKey.from_private_bytes(private)
        except ValueError as exc:
            raise ConfigError(f"{path} is not a WireGuard private key: {exc}") from exc
    else:
        key = X25519PrivateKey.generate()
        private = key.private_bytes_raw()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(private).decode() + "\n")
    return private, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


async def _cmd(*argv: str, check: bool = True) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    code = process.returncode or 0
    if check and code != 0:
        why = (err.decode().strip().splitlines() or [f"exit code {code}"])[-1]
        raise SwarmError(f"{' '.join(argv)}: {why}")
    return code, out.decode()


FORWARDING = Path("/proc/sys/net/ipv6/conf/all/forwarding")


def _sysctl(path: Path, value: str) -> str:
    """Set a /proc/sys value in this network namespace; returns the old one."""
    old = path.read_text().strip()
    path.write_text(value + "\n")
    return old


class _ExitedAtStart(Exception):
    """wireguard-go died before opening its UAPI socket."""


def _open_log(path: Path) -> Any:
    return open(path, "ab")


def _die_with_parent() -> None:
    """In the wireguard-go child: SIGTERM when the node dies, even by SIGKILL (Linux), so
    wireguard-go closes its interface; what survives anyway is cleaned at the next start."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _poke_all(allowed_ips: tuple[str, ...]) -> None:
    for host in allowed_ips:
        _poke(host.split("/")[0])


def _poke(address: str) -> None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.sendto(b"", (address, 9))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


async def _underlay_mtu(host: str) -> int:
    """MTU of the device holding `host`, else of the default route's device, else 1500."""
    _, addrs = await _cmd("ip", "-o", "addr", "show", check=False)
    device = None
    for line in addrs.splitlines():
        cols = line.split()
        if len(cols) > 3 and cols[3].split("/")[0] == host:
            device = cols[1]
    if device is None or device == "lo":
        _, route = await _cmd("ip", "-o", "route", "show", "default", check=False)
        cols = route.split()
        device = cols[cols.index("dev") + 1] if "dev" in cols else None
    if device is None:
        return 1500
    _, link = await _cmd("ip", "-o", "link", "show", "dev", device, check=False)
    cols = link.split()
    return int(cols[cols.index("mtu") + 1]) if "mtu" in cols else 1500


class MeshAgent:
    """Our WireGuard interface and its peers, kept equal to the mesh members in the view."""

    def __init__(self, options: MeshOptions, data_dir: Path, *,
                 time_source: Callable[[], float] = time.time,
                 trust: Callable[[PeerId], float] | None = None) -> None:
        self.options = options
        # Who gets the places when more members than max_peers want one (bonded stake).
        self.trust = trust
        self.data_dir = data_dir
        self.settings = MeshSettings(prefix=parse_prefix(options.prefix),
                                     max_peers=options.max_peers)
        self._time = time_source
        self._private, self.public_key = load_or_create_key(data_dir / KEY_FILE)
        self.interface = interface_name(self.public_key)
        self.address = derive_address(self.public_key, self.settings.prefix)
        self.backend = ""
        self.listen_port = 0
        self.mtu = 0
        # gRPC port served on the overlay address (the node sets it once bound).
        self.grpc_port = 0
        self._child: asyncio.subprocess.Process | None = None
        self._desired = Desired({}, {}, {}, {})
        self._cache: tuple[PeerView, PeerView] | None = None
        self._forwarding_was: str | None = None
        # New peers to poke at a time unless they handshake first: key -> (when, allowed ips).
        self._pending: dict[bytes, tuple[float, tuple[str, ...]]] = {}
        self._logged_refusals: set[tuple[PeerId, str]] = set()
        self.counters: dict[str, int] = {"peers_added": 0, "peers_removed": 0,
                                         "refused": 0, "restarts": 0}

    # ------------------------------------------------------------------ what others see

    @property
    def member(self) -> MeshMember:
        endpoint = "" if self.options.behind_nat else self.options.endpoint
        if endpoint and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + f":{self.listen_port}"
        return MeshMember(public_key=self.public_key, endpoint=endpoint,
                          address=str(self.address), grpc_port=self.grpc_port,
                          relay=self.options.relay)

    def prefer_overlay(self, view: PeerView) -> PeerView:
        """`view` with mesh peers' overlay endpoints first (cached per view)."""
        cached = self._cache
        if cached is not None and cached[0] is view:
            return cached[1]
        out = prefer_overlay(view, self._desired.overlay)
        self._cache = (view, out)
        return out

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        check_mesh_prerequisites()
        if self.options.endpoint and not self.options.behind_nat:
            endpoint = self.options.endpoint
            try:  # port 0: the one WireGuard picks, advertised once known
                split_endpoint(endpoint[:-2] + ":1" if endpoint.endswith(":0") else endpoint)
            except ValueError as exc:
                raise ConfigError(f"mesh endpoint {self.options.endpoint!r} must be a literal "
                                  "IP:PORT (no host names)") from exc
        await self._clean_leftovers()
        try:
            await self._bring_up()
        except BaseException:
            await self.close()
            raise
        self._write_state()
        log.info("mesh up", extra={"interface": self.interface, "address": str(self.address),
                                   "backend": self.backend, "port": self.listen_port,
                                   "mtu": self.mtu})

    async def _clean_leftovers(self) -> None:
        """Remove what a crashed run with this data dir left: its wireguard-go, interface,
        UAPI socket (the interface name is fixed by the key, so they are ours)."""
        state = self._read_state()
        owner = state.get("owner_pid")
        if isinstance(owner, int) and owner != os.getpid() and _pid_alive(owner) and \
                any("swarm" in part for part in _cmdline(owner)):
            raise ConfigError(f"another swarm-node (pid {owner}) runs the mesh of "
                              f"{self.data_dir}; stop it or use another --data-dir")
        pid = state.get("wireguard_go_pid")
        if isinstance(pid, int) and _pid_alive(pid) and self.interface in _cmdline(pid):
            log.warning("stopping wireguard-go left by a previous run", extra={"pid": pid})
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not _pid_alive(pid):
                    break
                await asyncio.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)
        code, _ = await _cmd("ip", "link", "show", "dev", self.interface, check=False)
        if code == 0:
            log.warning("deleting interface left by a previous run",
                        extra={"interface": self.interface})
            await _cmd("ip", "link", "del", "dev", self.interface, check=False)
        with contextlib.suppress(FileNotFoundError):
            (UAPI_DIR / f"{self.interface}.sock").unlink()

    async def _bring_up(self) -> None:
        code, _ = await _cmd("ip", "link", "add", "dev", self.interface, "type", "wireguard",
                             check=False)
        if code == 0:
            self.backend = "kernel"
        else:
            await self._start_wireguard_go()
        key_file = self.data_dir / KEY_FILE
        await _cmd("wg", "set", self.interface, "private-key", str(key_file),
                   "listen-port", str(self.options.listen_port))
        dump = (await _cmd("wg", "show", self.interface, "dump"))[1]
        self.listen_port, _ = parse_dump(dump)
        self.mtu = self.options.mtu or await _underlay_mtu(self.options.underlay_host) - OVERHEAD
        await _cmd("ip", "-6", "addr", "add", f"{self.address}/128", "dev", self.interface,
                   "nodad")
        await _cmd("ip", "link", "set", "dev", self.interface, "mtu", str(self.mtu), "up")
        await _cmd("ip", "-6", "route", "replace", str(self.settings.prefix), "dev",
                   self.interface)
        if self.options.relay and self._forwarding_was is None:
            self._forwarding_was = _sysctl(FORWARDING, "1")

    async def _start_wireguard_go(self) -> None:
        """Start the supervised wireguard-go; a child that dies before opening its socket is
        started again (twice at most), then the error says why."""
        for attempt in range(3):
            try:
                await self._start_wireguard_go_once()
                return
            except _ExitedAtStart as exc:
                if attempt == 2:
                    raise SwarmError(str(exc)) from None
                log.warning("wireguard-go exited at start; starting it again",
                            extra={"error": str(exc)})

    async def _start_wireguard_go_once(self) -> None:
        log_file = _open_log(self.data_dir / "wireguard-go.log")
        # SIGTERM to wireguard-go when the node dies: util-linux's setpriv sets it and execs
        # (same pid). A Python preexec_fn would run after fork() in a process with gRPC's
        # threads, which can abort the child (seen: wireguard-go "exited with -6 at start").
        setpriv = shutil.which("setpriv")
        argv = ["wireguard-go", "-f", self.interface]
        try:
            self._child = await asyncio.create_subprocess_exec(
                *([setpriv, "--pdeathsig", "TERM", *argv] if setpriv else argv),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                env={**os.environ, "LOG_LEVEL": "error", "WG_PROCESS_FOREGROUND": "1"},
                preexec_fn=None if setpriv else _die_with_parent)
        finally:
            log_file.close()
        self.backend = "wireguard-go"
        self._write_state()
        sock = UAPI_DIR / f"{self.interface}.sock"
        deadline = time.monotonic() + 10
        while not sock.exists():
            if self._child.returncode is not None:
                raise _ExitedAtStart(f"wireguard-go exited with {self._child.returncode} at "
                                     f"start (see {self.data_dir / 'wireguard-go.log'})")
            if time.monotonic() > deadline:
                raise SwarmError(f"wireguard-go did not open {sock} within 10 s")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Peers, interface (and with it the address and route), wireguard-go: all gone."""
        if self._forwarding_was is not None:
            with contextlib.suppress(OSError):
                _sysctl(FORWARDING, self._forwarding_was)
            self._forwarding_was = None
        await _cmd("ip", "link", "del", "dev", self.interface, check=False)
        child, self._child = self._child, None
        if child is not None and child.returncode is None:
            child.terminate()
            try:
                async with asyncio.timeout(5):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()
        with contextlib.suppress(FileNotFoundError):
            (UAPI_DIR / f"{self.interface}.sock").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        self._desired = Desired({}, {}, {}, {})
        self._cache = None

    # ------------------------------------------------------------------ reconciliation

    async def reconcile(self, view: PeerView) -> None:
        """One step: the view's mesh members -> `wg set` actions on our interface."""
        desired = desired_peers(self.member, mesh_members(view), self.settings, self.trust)
        for peer, why in desired.refused.items():
            if (peer, why) not in self._logged_refusals:
                self._logged_refusals.add((peer, why))
                self.counters["refused"] += 1
                log.warning("mesh peer %s refused: %s", peer.short, why)
        _, current = parse_dump((await _cmd("wg", "show", self.interface, "dump"))[1])
        added = []
        actions = plan(desired.peers, current, self._time())
        if actions:  # one `wg set` for all of them (peer by peer, never a full replace)
            await _cmd("wg", "set", self.interface, *[a for act in actions for a in act.args()])
        for action in actions:
            if isinstance(action, RemovePeer):
                self.counters["peers_removed"] += 1
            elif action.public_key not in current:
                self.counters["peers_added"] += 1
                added.append(action)
        # WireGuard handshakes on the first packet: one datagram to a new peer's overlay
        # address (the discard port) has the tunnel ready before the first request needs
        # it. If both ends sent theirs at once, each would answer the other's initiation,
        # drop its own, and wait 5 s (WireGuard's retry): the end with the smaller key
        # pokes at once, the other only if no handshake came within POKE_DELAY. Behind
        # NAT we always dial (nobody can reach us first).
        now = time.monotonic()
        for action in added:
            if action.endpoint is None:
                continue
            if not self.member.endpoint or self.public_key < action.public_key:
                _poke_all(action.allowed_ips)
            else:
                self._pending[action.public_key] = (now + POKE_DELAY, action.allowed_ips)
        self._desired = desired
        self._cache = None
        self._write_state()

    async def poke_pending(self) -> None:
        """Poke the new peers that have not handshaken with us by their turn."""
        if not self._pending:
            return
        now = time.monotonic()
        due = [key for key, (at, _) in self._pending.items() if at <= now]
        if not due:
            return
        _, current = parse_dump((await _cmd("wg", "show", self.interface, "dump"))[1])
        for key in due:
            _, hosts = self._pending.pop(key)
            peer = current.get(key)
            if peer is not None and not peer.latest_handshake:
                _poke_all(hosts)

    async def run(self, view: Callable[[], PeerView], *, period: float,
                  changed: Callable[[float], Any] | None = None) -> None:
        """Reconcile every `period` seconds, or sooner when `changed(timeout)` returns."""
        last: PeerView | None = None
        while True:
            await self._supervise()
            current = view()
            if current is not last:
                try:
                    await self.reconcile(current)
                    last = current
                except SwarmError as exc:
                    log.warning("mesh reconcile failed: %s", exc)
            with contextlib.suppress(SwarmError):
                await self.poke_pending()
            if changed is not None:
                await changed(period)
            else:
                await asyncio.sleep(period)

    async def _supervise(self) -> None:
        child = self._child
        if child is None or child.returncode is None:
            return
        self.counters["restarts"] += 1
        if self.counters["restarts"] > 3:
            raise SwarmError(f"wireguard-go keeps exiting (last status {child.returncode}); "
                             f"see {self.data_dir / 'wireguard-go.log'}")
        log.warning("wireguard-go exited (%s); restarting it", child.returncode)
        self._child = None
        await _cmd("ip", "link", "del", "dev", self.interface, check=False)
        with contextlib.suppress(FileNotFoundError):
            (UAPI_DIR / f"{self.interface}.sock").unlink()
        await self._bring_up()

    # ------------------------------------------------------------------ state file

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.data_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self) -> None:
        state = {
            "owner_pid": os.getpid(), "interface": self.interface, "backend": self.backend,
            "wireguard_go_pid": self._child.pid if self._child is not None else None,
            "address": str(self.address), "prefix": str(self.settings.prefix),
            "listen_port": self.listen_port, "mtu": self.mtu,
            "public_key": base64.b64encode(self.public_key).decode(),
            "peers": {base64.b64encode(k).decode(): str(p)
                      for k, p in self._desired.owners.items()},
            "refused": {str(p): why for p, why in self._desired.refused.items()},
        }
        path = self.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(path)


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


async def mesh_status(data_dir: Path, *, now: float | None = None) -> str:
    """What `swarm-node mesh status` prints: interface, address, each peer with its
    endpoint, last handshake and bytes (raises ConfigError when no mesh runs there)."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except OSError:
        raise ConfigError(f"no mesh runs with data dir {data_dir} (no {STATE_FILE}; "
                          "start it with swarm-node run --mesh)") from None
    interface = state["interface"]
    code, dump = await _cmd("wg", "show", interface, "dump", check=False)
    if code != 0:
        raise ConfigError(f"mesh interface {interface} is not up (its node stopped?)")
    port, peers = parse_dump(dump)
    now = time.time() if now is None else now
    names: dict[str, str] = state.get("peers", {})
    lines = [f"interface  {interface} ({state.get('backend', '?')}, mtu {state.get('mtu')})",
             f"address    {state['address']} in {state.get('prefix')}",
             f"public key {state.get('public_key')}",
             f"listening  udp {port}",
             f"peers      {len(peers)}"]
    for key, peer in sorted(peers.items(), key=lambda kv: names.get(
            base64.b64encode(kv[0]).decode(), "")):
        b64 = base64.b64encode(key).decode()
        handshake = _ago(now - peer.latest_handshake) if peer.latest_handshake else "never"
        lines.append(f"  {names.get(b64, '(unknown peer)')}  {b64}")
        lines.append(f"    endpoint {peer.endpoint or '(none yet)'}  allowed "
                     f"{','.join(peer.allowed_ips) or '(none)'}  handshake {handshake}  "
                     f"rx {peer.rx_bytes} B  tx {peer.tx_bytes} B"
                     + (f"  keepalive {peer.keepalive} s" if peer.keepalive else ""))
    for peer_id, why in sorted(state.get("refused", {}).items()):
        lines.append(f"  refused {peer_id}: {why}")
    return "\n".join(lines)


def endpoint_for(host: str, port: int) -> str:
    """"ip:port" (IPv6 bracketed) for an advertised host; ConfigError for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--mesh needs a literal IP to advertise (--advertise-host or "
                          f"--mesh-endpoint), not {host!r}") from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
