"""Node configuration: one frozen dataclass, loaded from TOML, environment and flags.

Precedence: command-line flags > environment (SWARM_<FIELD>) > TOML file > defaults.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm._errors import ConfigError
from swarm._types import ModelRef
from swarm.autoscale import AutoscaleConfig, LocalConfig
from swarm.protocol import MAX_BATCH, MAX_QUEUE_DEPTH

__all__ = ["ModelOptions", "NodeConfig", "check_ports", "load_config"]

ENV_PREFIX = "SWARM_"


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Per-model serving options (the `[models."NAME"]` tables of the config file)."""

    # Most items per forward pass; 0 = the model's own default.
    max_batch_size: int = 0
    # Seconds a request may wait for a fuller batch while requests keep arriving...
    max_queue_delay: float = 0.002
    # ...or this fraction of one execution's time when longer (slow models; 0: seconds only).
    max_queue_delay_fraction: float = 0.2
    # Batch sizes dispatched as soon as they are reached.
    preferred_batch_sizes: tuple[int, ...] = ()
    # Requests queued per model before RESOURCE_EXHAUSTED.
    max_queue_size: int = 1024
    # False executes every request alone.
    batching: bool = True
    # Cache responses of this model (bounded LRU keyed by digest and input bytes).
    cache: bool = False
    # Admission's latency target (swarm.scheduler.AdmissionPolicy): seconds of queued work,
    # at this model's measured rate, past which a swarm Router's attempt is refused with
    # the queue depth (it tries another provider). Requests from other clients are queued.
    # 0: never refuse.
    admission_wait: float = 0.05

    def __post_init__(self) -> None:
        # Checked here, not only when a file is loaded: flags replace() options after loading.
        if not 0 <= self.max_batch_size <= MAX_BATCH:
            # Peers refuse adverts stating a larger batch (swarm.protocol's bound).
            raise ConfigError(f"max_batch_size must be in [0, {MAX_BATCH}], not {self.max_batch_size}")
        if not 0 <= self.max_queue_delay < math.inf:
            raise ConfigError(f"max_queue_delay must be finite and >= 0, not {self.max_queue_delay}")
        if not 0 <= self.max_queue_delay_fraction <= 1:
            raise ConfigError(f"max_queue_delay_fraction must be in [0, 1], "
                              f"not {self.max_queue_delay_fraction}")
        if not 1 <= self.max_queue_size <= MAX_QUEUE_DEPTH:
            # Peers refuse adverts stating a deeper queue (swarm.protocol's bound).
            raise ConfigError(f"max_queue_size must be in [1, {MAX_QUEUE_DEPTH}], "
                              f"not {self.max_queue_size}")
        if not 0 <= self.admission_wait < math.inf:
            raise ConfigError(f"admission_wait must be finite and >= 0, not {self.admission_wait}")
        if any(p < 1 for p in self.preferred_batch_sizes):
            raise ConfigError(f"preferred_batch_sizes must be >= 1: {list(self.preferred_batch_sizes)}")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # Where the identity key and node state live.
    data_dir: Path = Path("~/.local/share/swarm-node")
    # Models to serve, by reference (e.g. builtin/minilm, acme/classifier:stable, ./m.pt2).
    serve: tuple[str, ...] = ()
    # Interface the gRPC and HTTP servers bind.
    listen_host: str = "127.0.0.1"
    # Host other peers and clients use to reach this node (advertised).
    advertise_host: str = "127.0.0.1"
    # gRPC port (0 = pick a free one).
    grpc_port: int = 7070
    # TLS gRPC port: what the node advertises and peers dial (identity-bound certificate,
    # TLS 1.3). None = grpc_port + 2 (0 when grpc_port is 0: a free one); -1 = none.
    tls_port: int | None = None
    # Operator certificate and key (PEM) for the TLS listeners instead of the node's
    # identity-bound one (then swarm peers cannot verify this node: foreign clients only).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Serve the HTTP listeners (OpenAI API, metrics) over TLS even on loopback.
    tls_http: bool = False
    # Allow plaintext listeners beyond loopback. Without it, a node listening beyond
    # loopback serves plaintext gRPC on 127.0.0.1:grpc_port only, and HTTP over TLS.
    insecure_listen: bool = False
    # Prometheus /metrics and health port (0 = pick a free one, -1 = off). A free one by
    # default, so a second node on the machine starts; it is printed in the banner and in
    # node.json. Scrapers that need a fixed port set it.
    metrics_port: int = 0
    # OpenAI-compatible HTTP API (/v1/embeddings, /v1/models) port (0 = any free, -1 = off).
    http_port: int = -1
    # libp2p port for discovery gossip (0 = pick a free one, -1 = no peer-to-peer).
    p2p_port: int = 7071
    # Multiaddrs of peers to join through, e.g. /ip4/1.2.3.4/tcp/7071/p2p/12D3KooW...
    bootstrap: tuple[str, ...] = ()
    # Find peers on the local network with mDNS.
    mdns: bool = False
    # Seconds between periodic capacity adverts (changes are advertised sooner).
    advert_interval: float = 5.0
    # Price in micro-units of the settlement currency, per request and per 1,000 items.
    price_per_request: int = 0
    price_per_1k_items: int = 0
    # Free-form region label shown to clients, e.g. "eu-west".
    region: str = ""
    # "auto" (CUDA when present), "cpu", "cuda", "cuda:N".
    device: str = "auto"
    # Devices this node may run instances of a model on, one each (local replicas, the
    # `[replicas]` table), e.g. ("cuda:0", "cuda:1"); the first is where models load.
    # (): every CUDA device when `device` is CUDA, else `device` alone. "cpu" may repeat
    # (several CPU instances: for tests, or a many-core host); CUDA devices may not.
    devices: tuple[str, ...] = ()
    # Largest gRPC message accepted or sent.
    max_message_bytes: int = 64 << 20
    # Models served elsewhere that a gateway keeps metrics labels and statistics for;
    # requests for others count as model="other" (a Prometheus label is kept forever).
    max_forwarded_models: int = 64
    # Responses one ModelStreamInfer stream may have in flight (computing, or waiting for
    # the client to read them); at the bound the node stops reading that stream's requests.
    max_stream_in_flight: int = 16
    # Largest body of an OpenAI-compatible HTTP API request (bytes); larger ones get 413.
    http_max_body_bytes: int = 32 << 20
    # Deepest nesting of arrays and objects in such a body (an embeddings request needs 3).
    http_max_json_depth: int = 32
    # Seconds SIGTERM waits for in-flight requests before exiting.
    drain_timeout: float = 30.0
    # Generative models (builtin/smollm2): sequences decoding together (KV cache slots),
    # tokens computed per engine step (prefill chunks + decodes), KV cache budget in
    # tokens for all sequences together, context per sequence (prompt + generated), and
    # the weights' form: "int4" (the GGUF's own 4-bit blocks for small batches, a bf16
    # copy for prefill), "bf16" or "fp32".
    generation_max_seqs: int = 32
    generation_step_tokens: int = 512
    generation_kv_tokens: int = 32768
    generation_max_len: int = 2048
    generation_weights: str = "int4"
    # Response cache bound, shared by the models that enable caching.
    cache_max_bytes: int = 64 << 20
    # Torch intra-op threads (0 = adaptive: one fewer than the CPU cores for short passes,
    # leaving one for gRPC; for long ones all cores or one fewer, whichever measured faster).
    torch_threads: int = 0
    # "debug", "info", "warning", "error".
    log_level: str = "info"
    # "text" (key=value) or "json" (one object per line).
    log_format: str = "text"
    # Live nodes that should store each pinned registry version.
    replication_factor: int = 3
    # Namespace -> hex Ed25519 public keys that own it (the `[allowlist]` table). Other
    # namespaces are bound to the first publisher seen (trust on first use).
    allowlist: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Per-model options by model name; "*" applies to every model.
    models: Mapping[str, ModelOptions] = field(default_factory=dict)
    # Largest version (all its files, bytes) a publisher may push here; 0 = no limit.
    # Checked against the signed manifest before anything is stored.
    registry_max_push_bytes: int = 32 << 30
    # Seconds a push may go without delivering a verified chunk before it is aborted
    # and another push of the same blob takes its turn; 0 = no limit.
    registry_push_idle_timeout: float = 30.0
    # Namespaces one publisher key may claim on first use (allowlisted ones do not count).
    registry_max_namespaces_per_key: int = 16
    # Tags one namespace may hold.
    registry_max_tags_per_namespace: int = 64
    # Tags this node holds in all, whoever signed them (keys cost nothing to make).
    registry_max_tags: int = 4096
    # Largest batch a registry version is served and warmed up with, whatever its
    # manifest declares; a model's own max_batch_size option replaces this cap.
    max_served_batch_size: int = 256
    # Join the WireGuard mesh (root; wireguard-tools, and the kernel module or wireguard-go):
    # inference and blob traffic to other members goes over their overlay addresses.
    mesh: bool = False
    # UDP port of the WireGuard socket (0: any free one).
    mesh_port: int = 51820
    # Overlay IPv6 prefix; every member of one mesh uses the same.
    mesh_prefix: str = "fd5a:7761:726d::/48"
    # Underlay "ip:port" other members reach our WireGuard socket at ("": advertise_host
    # and mesh_port).
    mesh_endpoint: str = ""
    # This host is behind NAT: advertise no endpoint, dial members with keepalive.
    mesh_behind_nat: bool = False
    # Forward overlay traffic between members behind NAT (turns on IPv6 forwarding).
    mesh_relay: bool = False
    # WireGuard interface MTU (0: the underlay's MTU minus 80).
    mesh_mtu: int = 0
    # Staking: the network's genesis file (TOML, swarm.staking.Genesis). With one, the node
    # keeps the ledger (DATA_DIR/ledger.sqlite) and serves swarm.v1.LedgerService; without,
    # staking is off.
    genesis: Path | None = None
    # The genesis timekeeper's identity key file: this node signs a Tick every epoch.
    timekeeper_key: Path | None = None
    # Autoscaling (the `[autoscale]` table; off unless enabled = true or --autoscale):
    # load models the swarm needs more replicas of, release them when it no longer does.
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    # Local replicas (the `[replicas]` table; mode "auto" by default, which does something
    # only with several `devices`): another instance of a busy model on a free device,
    # released after a cool-down.
    replicas: LocalConfig = field(default_factory=LocalConfig)

    def model_options(self, name: str) -> ModelOptions:
        return self.models.get(name) or self.models.get("*") or ModelOptions()

    @property
    def key_path(self) -> Path:
        return self.data_dir / "identity.key"

    @property
    def tls_listen_port(self) -> int:
        """The TLS gRPC port to bind (0: a free one, -1: none)."""
        if self.tls_port is not None:
            return self.tls_port
        return self.grpc_port + 2 if self.grpc_port > 0 else 0

    @property
    def loopback_only(self) -> bool:
        """Whether the listen host is a loopback address (or name)."""
        import ipaddress

        if self.listen_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.listen_host).is_loopback
        except ValueError:
            return False

    @classmethod
    def local(cls, data_dir: Path, **overrides: Any) -> NodeConfig:
        """A node on this machine only: loopback, free ports, no peer-to-peer unless asked."""
        settings: dict[str, Any] = {"grpc_port": 0, "metrics_port": 0, "p2p_port": -1,
                                    "http_port": -1}
        settings.update(overrides)
        return cls(data_dir=data_dir, **settings)

    @classmethod
    def wan(cls, data_dir: Path, advertise_host: str, **overrides: Any) -> NodeConfig:
        """A provider reachable from other machines."""
        return cls(data_dir=data_dir, listen_host="0.0.0.0", advertise_host=advertise_host,
                   **overrides)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(NodeConfig)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Convert a TOML/env/flag value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(kind)
    try:
        if kind is Path:
            return Path(str(value)).expanduser()
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is str:
            if not isinstance(value, str):  # str() would turn a TOML list or number into text
                raise TypeError(value)
            return value
        if kind in (int, float):
            # int(7070.5) truncates and int(True) is 1: neither is what the user wrote.
            if isinstance(value, bool) or (kind is int and isinstance(value, float)):
                raise ValueError(value)
            return kind(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            (inner, *_) = typing.get_args(kind)
            return tuple(_coerce(name, inner, v.strip() if isinstance(v, str) else v)
                         for v in items if v != "")
        if origin in (types.UnionType, typing.Union):
            return _coerce(name, typing.get_args(kind)[0], value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r} as {getattr(kind, '__name__', kind)}") from exc
    raise ConfigError(f"{name}: unsupported setting type")


def _model_options(name: str, raw: Any) -> ModelOptions:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"models.{name} must be a table")
    hints = typing.get_type_hints(ModelOptions)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ConfigError(f"models.{name}: unknown settings {sorted(unknown)}")
    values = {k: _coerce(f"models.{name}.{k}", hints[k], v) for k, v in raw.items()}
    try:
        return ModelOptions(**values)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"models.{name}: {exc}") from exc


def _allowlist(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ConfigError("allowlist must be a table: namespace = [\"hex key\", ...]")
    out: dict[str, tuple[str, ...]] = {}
    for namespace, keys in raw.items():
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list) or not keys or not all(
                isinstance(k, str) and len(k) == 64 and all(c in "0123456789abcdef" for c in k)
                for k in keys):
            raise ConfigError(f"allowlist.{namespace}: a list of 64-hex-digit Ed25519 public keys")
        out[str(namespace)] = tuple(keys)
    return out


def _table(name: str, kind: type[Any], raw: Any) -> Any:
    """A settings table ([autoscale], [replicas]) as its frozen dataclass."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name} must be a table")
    hints = typing.get_type_hints(kind)
    unknown = set(k.replace("-", "_") for k in raw) - set(hints)
    if unknown:
        raise ConfigError(f"{name}: unknown settings {sorted(unknown)}")
    values = {k.replace("-", "_"): _coerce(f"{name}.{k}", hints[k.replace("-", "_")], v)
              for k, v in raw.items()}
    try:
        return kind(**values)
    except TypeError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _autoscale(raw: Any) -> AutoscaleConfig:
    config: AutoscaleConfig = _table("autoscale", AutoscaleConfig, raw)
    return config


_TABLES = ("models", "allowlist", "autoscale", "replicas")


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Merge defaults, the TOML file, SWARM_* variables and flags (None values are unset)."""
    hints = _field_types()
    merged: dict[str, Any] = {}
    models: dict[str, ModelOptions] = {}
    if file is not None:
        try:
            raw = tomllib.loads(Path(file).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        for key, value in raw.items():
            key = key.replace("-", "_")
            if key == "models":
                if not isinstance(value, Mapping):
                    raise ConfigError("models must be a table of tables")
                models = {name: _model_options(name, opts) for name, opts in value.items()}
            elif key == "allowlist":
                merged["allowlist"] = _allowlist(value)
            elif key == "autoscale":
                merged["autoscale"] = _autoscale(value)
            elif key == "replicas":
                merged["replicas"] = _table("replicas", LocalConfig, value)
            elif key in hints:
                merged[key] = _coerce(key, hints[key], value)
            else:
                raise ConfigError(f"{file}: unknown setting {key!r}")
    for key, value in (env if env is not None else os.environ).items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in hints and name not in _TABLES:
                merged[name] = _coerce(key, hints[name], value)
    for key, value in (flags or {}).items():
        if value is None or value == ():
            continue
        if key not in hints or key in _TABLES:
            raise ConfigError(f"unknown flag {key!r}")
        merged[key] = _coerce(f"--{key.replace('_', '-')}", hints[key], value)
    config = NodeConfig(models=models, **merged)
    _validate(config)
    return config


def _validate(config: NodeConfig) -> None:
    for port_name in ("grpc_port",):
        port = getattr(config, port_name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{port_name} {port} is not a port number")
    if config.tls_port is not None and not -1 <= config.tls_port <= 65535:
        raise ConfigError(f"tls_port {config.tls_port} is not a port number (or -1)")
    for name in ("metrics_port", "p2p_port", "http_port"):
        if not -1 <= getattr(config, name) <= 65535:
            raise ConfigError(f"{name} {getattr(config, name)} is not a port number (or -1)")
    if config.timekeeper_key is not None and config.genesis is None:
        raise ConfigError("--timekeeper-key needs --genesis")
    if config.replication_factor < 1:
        raise ConfigError("replication_factor must be >= 1")
    if config.advert_interval <= 0:
        raise ConfigError("advert_interval must be positive")
    if config.price_per_request < 0 or config.price_per_1k_items < 0:
        raise ConfigError("prices must be >= 0")
    for addr in config.bootstrap:
        if not addr.startswith("/") or "/p2p/" not in addr:
            raise ConfigError(f"bootstrap address {addr!r} must be a multiaddr ending in /p2p/PEERID")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level must be debug, info, warning or error")
    if config.max_message_bytes < 1024:
        raise ConfigError("max_message_bytes must be at least 1024")
    if not config.drain_timeout >= 0:  # also refuses NaN
        raise ConfigError("drain_timeout must be >= 0 seconds")
    if config.cache_max_bytes < 1:
        raise ConfigError("cache_max_bytes must be at least 1")
    for name in ("generation_max_seqs", "generation_step_tokens", "generation_kv_tokens",
                 "generation_max_len"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config.generation_max_len < 2:
        raise ConfigError("generation_max_len must hold a prompt token and a generated one (>= 2)")
    if config.generation_kv_tokens < config.generation_max_len + 1:
        raise ConfigError(f"generation_kv_tokens ({config.generation_kv_tokens}) must hold one "
                          f"whole sequence: at least generation_max_len + 1 "
                          f"({config.generation_max_len + 1})")
    if config.generation_weights not in ("int4", "bf16", "fp32"):
        raise ConfigError(f"generation_weights must be int4, bf16 or fp32, "
                          f"not {config.generation_weights!r}")
    for name in ("max_forwarded_models", "max_stream_in_flight", "http_max_body_bytes",
                 "http_max_json_depth"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("registry_max_push_bytes", "registry_max_namespaces_per_key",
                 "registry_max_tags_per_namespace", "registry_max_tags"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0 (0: no limit)")
    if not config.registry_push_idle_timeout >= 0:  # also refuses NaN
        raise ConfigError("registry_push_idle_timeout must be >= 0 seconds (0: no limit)")
    if not 1 <= config.max_served_batch_size <= MAX_BATCH:
        raise ConfigError(f"max_served_batch_size must be in [1, {MAX_BATCH}] (peers refuse "
                          "adverts stating a larger batch)")
    if config.mesh and config.p2p_port < 0:
        raise ConfigError("--mesh needs peer-to-peer (members find each other in adverts): "
                          "drop --p2p-port -1")
    if not 0 <= config.mesh_port <= 65535:
        raise ConfigError(f"mesh_port {config.mesh_port} is not a port number")
    if config.mesh_mtu and not 1280 <= config.mesh_mtu <= 65535:
        raise ConfigError("mesh_mtu must be 0 (underlay - 80) or 1280..65535 (IPv6 minimum)")
    _check_devices(config)
    for ref in config.serve:
        if not ref.endswith(".pt2"):
            try:
                ModelRef.parse(ref)
            except ValueError as exc:
                raise ConfigError(f"--serve {ref!r}: {exc}") from exc


# Most entries of `devices` (each CPU one is a thread and a copy of every model).
MAX_DEVICES = 64
_DEVICE = re.compile(r"cpu|cuda(?::(\d{1,4}))?")


def _check_devices(config: NodeConfig) -> None:
    """`devices` names CPU or CUDA devices, no CUDA one twice, not both kinds, and begins
    with `device` when that is given. Whether a CUDA device exists is checked at start-up."""
    devices = config.devices
    if not devices:
        return
    if len(devices) > MAX_DEVICES:
        raise ConfigError(f"devices: {len(devices)} given, at most {MAX_DEVICES}")
    seen: set[int] = set()
    for device in devices:
        match = _DEVICE.fullmatch(device)
        if match is None:
            raise ConfigError(f"devices: unknown device {device[:40]!r} (cpu, cuda or cuda:N)")
        if device != "cpu":
            index = int(match.group(1) or 0)
            if index in seen:
                raise ConfigError(f"devices: cuda:{index} is named twice ({', '.join(devices)})")
            seen.add(index)
    if seen and "cpu" in devices:
        raise ConfigError("devices: all CPU or all CUDA (instances of a model must compute "
                          "alike)")
    first = devices[0]
    if config.device != "auto" and _canonical(config.device) != _canonical(first):
        raise ConfigError(f"device {config.device!r} must be the first of devices "
                          f"({', '.join(devices)}), or auto")


def _canonical(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


# Every port the node listens on: setting, flag, what it serves.
PORTS = (
    ("grpc_port", "--grpc-port", "gRPC"),
    ("tls_listen_port", "--tls-port", "TLS gRPC"),
    ("metrics_port", "--metrics-port", "metrics"),
    ("http_port", "--http-port", "OpenAI-compatible HTTP"),
    ("p2p_port", "--p2p-port", "libp2p"),
)


def _bind_error(host: str, port: int) -> OSError | None:
    """Why the node could not listen on host:port now (None: it can).

    A probe bind, released at once: the real listeners bind only after the models
    load, and grpc would report a busy port as a C-core log line on stderr. Like the
    servers, the probe sets SO_REUSEADDR (a TIME_WAIT leftover is no conflict) and not
    SO_REUSEPORT (which would share a port with a live listener).
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    unavailable: OSError | None = None
    bound = False
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
            bound = True
        except OSError as exc:
            # "localhost" may also name ::1 on a host without IPv6: fine if another works.
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return exc
            unavailable = exc
    return None if bound else unavailable


def _free_port_near(host: str, port: int, taken: set[int]) -> int | None:
    """A free port just above `port`, for the error message (None: none nearby)."""
    for candidate in range(port + 1, min(port + 100, 65535) + 1):
        if candidate not in taken and _bind_error(host, candidate) is None:
            return candidate
    return None


def check_ports(config: NodeConfig) -> None:
    """Raise one ConfigError naming every configured port the node cannot listen on.

    Run before anything slow (identity, model loading), so an operator learns about
    all conflicts at once, in a second, with the flags that fix them. Ports 0 (any
    free port) and -1 (off) need no check.
    """
    host = config.listen_host
    host_error = _bind_error(host, 0)
    if host_error is not None:
        raise ConfigError(f"cannot listen on {host} (--listen-host): "
                          f"{host_error.strerror or host_error}")
    problems: list[str] = []
    bad: list[tuple[str, int]] = []  # (flag, port)
    claimed: dict[int, str] = {}
    for name, flag, what in PORTS:
        port = getattr(config, name)
        if port <= 0:
            continue
        if port in claimed:
            problems.append(f"{what} port {port} ({flag}) is also the {claimed[port]} port")
            bad.append((flag, port))
            continue
        claimed[port] = what
        error = _bind_error(host, port)
        if error is not None:
            reason = error.strerror or str(error)
            problems.append(f"{what} port {port} ({flag}): {reason}")
            bad.append((flag, port))
    if not problems:
        return
    taken = set(claimed)
    alternatives = []
    for flag, port in bad:
        free = _free_port_near(host, port, taken)
        if free is not None:
            taken.add(free)
            alternatives.append(f"{flag} {free}")
    fix = " ".join(f"{flag} 0" for flag, _ in bad) + " (any free port, printed at start-up)"
    if len(alternatives) == len(bad):
        fix += " or free ports such as " + " ".join(alternatives)
    raise ConfigError(f"cannot listen on {host}:\n"
                      + "".join(f"  {problem}\n" for problem in problems)
                      + f"pass {fix}")


def replace(config: NodeConfig, **changes: Any) -> NodeConfig:
    return dataclasses.replace(config, **changes)
