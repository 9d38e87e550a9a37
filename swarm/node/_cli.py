"""`swarm-node`: run the provider agent, print its identity, or show a running node's status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from swarm import __version__
from swarm._errors import ConfigError, ModelLoadError, SwarmError
from swarm._logging import configure_logging
from swarm.autoscale import AutoscaleConfig, LocalConfig
from swarm.node._config import ModelOptions, NodeConfig, check_ports, load_config

__all__ = ["main"]


# What an unset flag falls back to when neither SWARM_* nor --config sets it.
_DEFAULTS = NodeConfig()
_MODEL_DEFAULTS = ModelOptions()
_SCALE = AutoscaleConfig()
_REPLICAS = LocalConfig()


_PRECEDENCE = ("Settings: flags override SWARM_<SETTING> environment variables, which "
               "override the --config file, which overrides the defaults shown.")


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    return f"(default: {value})" if value != "" else "(default: none)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm-node", description="The Swarm provider agent.",
                                     epilog=_PRECEDENCE)
    parser.add_argument("--version", action="version", version=f"swarm-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve models until SIGTERM", epilog=_PRECEDENCE,
                         description="Serve models until SIGTERM, then drain and exit 0.")
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (default: none)")
    run.add_argument("--data-dir", type=Path, metavar="DIR",
                     help=f"identity and state directory {_default('data_dir')}")
    run.add_argument("--serve", action="append", metavar="MODEL",
                     help="model to serve (repeatable): builtin/minilm, builtin/mlp, FILE.pt2, "
                          "NAMESPACE/NAME:TAG (default: none)")
    run.add_argument("--grpc-port", type=int, metavar="PORT",
                     help=f"gRPC port; 0 = any free port {_default('grpc_port')}")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="metrics/health port; 0 = any free port (printed at start-up), "
                          f"-1 = off {_default('metrics_port')}")
    run.add_argument("--http-port", type=int, metavar="PORT",
                     help="OpenAI-compatible HTTP API port; 0 = any free port, -1 = off "
                          f"{_default('http_port')}")
    run.add_argument("--listen-host", metavar="HOST", help=f"interface to bind {_default('listen_host')}")
    run.add_argument("--advertise-host", metavar="HOST",
                     help=f"host clients use to reach this node {_default('advertise_host')}")
    run.add_argument("--device", help=f"auto, cpu, cuda, cuda:N {_default('device')}")
    tls = run.add_argument_group("TLS")
    tls.add_argument("--tls-port", type=int, metavar="PORT",
                     help="TLS gRPC port that peers dial (advertised); 0 = any free port, "
                          "-1 = none (default: --grpc-port + 2, or any free port)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM",
                     help="operator certificate for the TLS listeners (default: the node's "
                          "identity-bound certificate, printed by `swarm-node cert`)")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert")
    tls.add_argument("--tls-http", action="store_true", default=None,
                     help="serve the HTTP ports (OpenAI API, metrics) over TLS also on loopback")
    # Test only, hidden from --help: a seeded share of answers made wrong (signed as usual),
    # for the tests that must catch a provider returning wrong results.
    run.add_argument("--test-perturb-outputs", type=float, default=0.0, metavar="FRACTION",
                     help=argparse.SUPPRESS)
    run.add_argument("--test-perturb-seed", type=int, default=0, help=argparse.SUPPRESS)
    tls.add_argument("--insecure-listen", action="store_true", default=None,
                     help="allow plaintext gRPC and HTTP beyond loopback (default: plaintext "
                          "gRPC only on 127.0.0.1, HTTP over TLS)")
    p2p = run.add_argument_group("peer-to-peer")
    p2p.add_argument("--p2p-port", type=int, metavar="PORT",
                     help=f"libp2p port; 0 = any free port, -1 = off {_default('p2p_port')}")
    p2p.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                     help="peer to join through (repeatable) (default: none)")
    p2p.add_argument("--mdns", action="store_true", default=None,
                     help=f"find peers on the LAN {_default('mdns')}")
    p2p.add_argument("--advert-interval", type=float,
                     help=f"seconds between capacity adverts {_default('advert_interval')}")
    p2p.add_argument("--price-per-request", type=int,
                     help=f"micro-units per request {_default('price_per_request')}")
    p2p.add_argument("--price-per-1k-items", type=int,
                     help=f"micro-units per 1,000 items {_default('price_per_1k_items')}")
    p2p.add_argument("--region", help=f"region label, e.g. eu-west {_default('region')}")
    stake = run.add_argument_group("staking")
    stake.add_argument("--genesis", type=Path, metavar="FILE",
                       help="the network's genesis (TOML): keep the staking ledger "
                            "(default: none, staking off)")
    stake.add_argument("--timekeeper-key", type=Path, metavar="FILE",
                       help="the genesis timekeeper's identity key: sign a tick every epoch "
                            "(default: none)")
    mesh = run.add_argument_group("WireGuard mesh (root; apt-get install wireguard-tools "
                                  "wireguard-go iproute2)")
    mesh.add_argument("--mesh", action="store_true", default=None,
                      help="join the mesh: other members are reached over overlay addresses "
                           f"{_default('mesh')}")
    mesh.add_argument("--mesh-port", type=int, metavar="PORT",
                      help=f"WireGuard UDP port; 0 = any free port {_default('mesh_port')}")
    mesh.add_argument("--mesh-prefix", metavar="CIDR",
                      help=f"overlay IPv6 prefix, the same for every member {_default('mesh_prefix')}")
    mesh.add_argument("--mesh-endpoint", metavar="IP:PORT",
                      help="underlay address members reach our WireGuard socket at "
                           "(default: --advertise-host and --mesh-port)")
    mesh.add_argument("--mesh-behind-nat", action="store_true", default=None,
                      help="this host is behind NAT: dial members, keep mappings open "
                           f"{_default('mesh_behind_nat')}")
    mesh.add_argument("--mesh-relay", action="store_true", default=None,
                      help="forward overlay traffic between members behind NAT "
                           f"{_default('mesh_relay')}")
    run.add_argument("--drain-timeout", type=float,
                     help=f"seconds to finish in-flight work {_default('drain_timeout')}")
    gen = run.add_argument_group("generation (builtin/smollm2)")
    gen.add_argument("--generation-max-seqs", type=int, metavar="N",
                     help=f"sequences decoding together {_default('generation_max_seqs')}")
    gen.add_argument("--generation-step-tokens", type=int, metavar="N",
                     help="tokens per engine step, prefill chunks + decodes "
                          f"{_default('generation_step_tokens')}")
    gen.add_argument("--generation-kv-tokens", type=int, metavar="N",
                     help="KV cache budget in tokens, all sequences together "
                          f"{_default('generation_kv_tokens')}")
    gen.add_argument("--generation-max-len", type=int, metavar="N",
                     help=f"context per sequence {_default('generation_max_len')}")
    gen.add_argument("--generation-weights", choices=["int4", "bf16", "fp32"],
                     help=_default("generation_weights"))
    run.add_argument("--torch-threads", type=int,
                     help=f"torch intra-op threads; 0 = adaptive (CPU cores - 1, or all "
                          f"cores for long passes of a batch size where measured faster) "
                          f"{_default('torch_threads')}")
    run.add_argument("--max-message-bytes", type=int,
                     help=f"largest gRPC message {_default('max_message_bytes')}")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help=_default("log_level"))
    run.add_argument("--log-format", choices=["text", "json"], help=_default("log_format"))
    batch = run.add_argument_group("batching (applies to every model; per model: config file)")
    batch.add_argument("--max-batch-size", type=int,
                       help="most items per forward pass; 0 = the model's own "
                            f"(default: {_MODEL_DEFAULTS.max_batch_size})")
    # Seconds, as `max_queue_delay` in the config file; `--max-queue-delay-ms` is the old,
    # deprecated flag (milliseconds), still read.
    batch.add_argument("--max-queue-delay", type=float, metavar="SECONDS",
                       help="seconds a request may wait for a fuller batch, e.g. 0.002 "
                            f"(default: {_MODEL_DEFAULTS.max_queue_delay:g})")
    batch.add_argument("--max-queue-delay-ms", type=float, help=argparse.SUPPRESS)
    batch.add_argument("--max-queue-size", type=int,
                       help="requests queued per model before RESOURCE_EXHAUSTED "
                            f"(default: {_MODEL_DEFAULTS.max_queue_size})")
    batch.add_argument("--no-batching", action="store_true", help="execute requests one by one")
    batch.add_argument("--cache", action="store_true", help="cache responses")
    scale = run.add_argument_group(
        "autoscaling (opt-in; more settings: the [autoscale] table of the config file)")
    scale.add_argument("--autoscale", action="store_true", default=None,
                       help="load models the swarm needs more replicas of and release them "
                            "when it no longer does (default: off)")
    scale.add_argument("--autoscale-max-models", type=int, metavar="N",
                       help=f"most models served here (default: {_SCALE.max_models})")
    scale.add_argument("--autoscale-memory-budget", type=int, metavar="BYTES",
                       help="bytes of models held loaded; 0 = no bound "
                            f"(default: {_SCALE.memory_budget})")
    scale.add_argument("--autoscale-allow", action="append", metavar="NAME_OR_NAMESPACE/",
                       help="model names or namespaces (ending in /) it may load (repeatable; "
                            "default: any)")
    scale.add_argument("--autoscale-min-price", type=int, metavar="MICROS",
                       help="least price per request a model must pay "
                            f"(default: {_SCALE.min_price})")
    scale.add_argument("--autoscale-min-replicas", type=int, metavar="N",
                       help=f"replicas kept however quiet a model is (default: {_SCALE.min_replicas})")
    local = run.add_argument_group(
        "local replicas: one instance of a busy model per device (more settings: the "
        "[replicas] table of the config file)")
    local.add_argument("--replicas", choices=["auto", "off"],
                       help="auto: add an instance of a model on a free device while its "
                            "queue stays long on busy instances, release it after a cool-down; "
                            "off: one instance per model. Acts only with several devices "
                            f"(default: {_REPLICAS.mode})")
    local.add_argument("--devices", metavar="LIST",
                       help="devices instances may run on, comma-separated, the first where "
                            "models load, e.g. cuda:0,cuda:1; cpu may repeat (cpu,cpu: two "
                            "CPU instances) (default: every CUDA device with --device cuda, "
                            "else --device alone)")

    ident = sub.add_parser("id", help="print this node's peer id (and addresses while it runs)",
                           epilog=_PRECEDENCE,
                           description="Print the peer id of the identity in the data dir "
                                       "(created there if none exists), and the node's "
                                       "addresses while it runs.")
    _data_dir_options(ident, config_for="its data_dir",
                      data_dir_help="identity and state directory, as for run")
    mesh_cmd = sub.add_parser("mesh", help="the WireGuard mesh of a running node")
    mesh_sub = mesh_cmd.add_subparsers(dest="mesh_command", required=True)
    mesh_status = mesh_sub.add_parser(
        "status", help="interface, address, and each peer with endpoint, handshake, bytes",
        epilog=_PRECEDENCE)
    _data_dir_options(mesh_status, config_for="its data_dir",
                      data_dir_help="the node's data directory")

    status = sub.add_parser("status", help="show a running node's models and scaling decisions",
                            epilog=_PRECEDENCE,
                            description="Ask a running node (found through node.json in its "
                                        "data dir, or at --address) for its status: models "
                                        "served, and its latest autoscaling decisions and why.")
    _data_dir_options(status, config_for="its data_dir",
                      data_dir_help="the node's data directory")
    status.add_argument("--address", metavar="HOST:PORT", help="the node's gRPC address instead")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    cert = sub.add_parser("cert", help="print this node's TLS certificate (PEM)",
                          epilog=_PRECEDENCE,
                          description="Print the PEM certificate the node's TLS listeners serve "
                                      "(bound to its identity, which is created in the data dir "
                                      "if none exists; renewed weekly, at start-up). Give it to "
                                      "foreign clients as their root certificate.")
    _data_dir_options(cert, config_for="its data_dir and hosts",
                      data_dir_help="identity and state directory, as for run")
    return parser


def _data_dir_options(parser: argparse.ArgumentParser, *, config_for: str,
                      data_dir_help: str) -> None:
    """--config and --data-dir, for the commands that find a node through its data dir."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"TOML config file, for {config_for} (default: none)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help=f"{data_dir_help} {_default('data_dir')}")


def _config(args: argparse.Namespace) -> NodeConfig:
    flags: dict[str, Any] = {
        "data_dir": args.data_dir, "serve": tuple(args.serve or ()),
        "grpc_port": args.grpc_port, "metrics_port": args.metrics_port,
        "http_port": args.http_port,
        "listen_host": args.listen_host, "advertise_host": args.advertise_host,
        "device": args.device, "devices": args.devices, "drain_timeout": args.drain_timeout,
        "generation_max_seqs": args.generation_max_seqs,
        "generation_step_tokens": args.generation_step_tokens,
        "generation_kv_tokens": args.generation_kv_tokens,
        "generation_max_len": args.generation_max_len,
        "generation_weights": args.generation_weights,
        "p2p_port": args.p2p_port, "bootstrap": tuple(args.bootstrap or ()), "mdns": args.mdns,
        "advert_interval": args.advert_interval, "price_per_request": args.price_per_request,
        "price_per_1k_items": args.price_per_1k_items, "region": args.region,
        "torch_threads": args.torch_threads, "max_message_bytes": args.max_message_bytes,
        "log_level": args.log_level, "log_format": args.log_format,
        "mesh": args.mesh, "mesh_port": args.mesh_port, "mesh_prefix": args.mesh_prefix,
        "mesh_endpoint": args.mesh_endpoint, "mesh_behind_nat": args.mesh_behind_nat,
        "mesh_relay": args.mesh_relay,
        "tls_port": args.tls_port, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "tls_http": args.tls_http, "insecure_listen": args.insecure_listen,
        "genesis": args.genesis, "timekeeper_key": args.timekeeper_key,
    }
    config = load_config(args.config, flags=flags)
    overrides: dict[str, Any] = {}
    if args.max_batch_size is not None:
        overrides["max_batch_size"] = args.max_batch_size
    if args.max_queue_delay_ms is not None:
        if args.max_queue_delay is not None:
            raise ConfigError("give --max-queue-delay SECONDS (not also --max-queue-delay-ms)")
        print("swarm-node: --max-queue-delay-ms is deprecated: use --max-queue-delay SECONDS "
              f"(here {args.max_queue_delay_ms / 1000:g}), the unit of max_queue_delay in the "
              "config file", file=sys.stderr)
        overrides["max_queue_delay"] = args.max_queue_delay_ms / 1000
    if args.max_queue_delay is not None:
        overrides["max_queue_delay"] = args.max_queue_delay
    if args.max_queue_size is not None:
        overrides["max_queue_size"] = args.max_queue_size
    if args.no_batching:
        overrides["batching"] = False
    if args.cache:
        overrides["cache"] = True
    if overrides:
        import dataclasses

        models = {name: dataclasses.replace(opts, **overrides)
                  for name, opts in config.models.items()}
        models["*"] = dataclasses.replace(config.models.get("*", ModelOptions()), **overrides)
        config = dataclasses.replace(config, models=models)
    config = _autoscale_flags(args, config)
    if args.replicas is not None:
        import dataclasses

        config = dataclasses.replace(
            config, replicas=dataclasses.replace(config.replicas, mode=args.replicas))
    return config


def _autoscale_flags(args: argparse.Namespace, config: NodeConfig) -> NodeConfig:
    import dataclasses

    scale: dict[str, Any] = {
        "enabled": args.autoscale, "max_models": args.autoscale_max_models,
        "memory_budget": args.autoscale_memory_budget, "min_price": args.autoscale_min_price,
        "min_replicas": args.autoscale_min_replicas,
        "allowed": tuple(args.autoscale_allow) if args.autoscale_allow else None}
    scale = {k: v for k, v in scale.items() if v is not None}
    if not scale:
        return config
    return dataclasses.replace(config, autoscale=dataclasses.replace(config.autoscale, **scale))


def _status(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from swarm._proto.swarm.v1 import node_pb2, node_pb2_grpc

    address = args.address
    if address is None:
        config = load_config(args.config, flags={"data_dir": args.data_dir})
        state = config.data_dir.expanduser() / "node.json"
        if not state.exists():
            raise SwarmError(f"no node runs with data dir {config.data_dir} ({state} is missing); "
                             "give --data-dir or --address")
        address = json.loads(state.read_text())["grpc"]
    try:
        with grpc.insecure_channel(address) as channel:
            status = node_pb2_grpc.NodeServiceStub(channel).GetStatus(
                node_pb2.GetStatusRequest(), timeout=10)
    except grpc.RpcError as exc:
        raise SwarmError(f"cannot reach the node at {address}: {exc.code().name}: "
                         f"{exc.details()}") from None
    if args.json:
        print(json_format.MessageToJson(status, preserving_proto_field_name=True))
        return 0
    print(f"peer id    {status.peer_id}")
    print(f"grpc       {', '.join(status.grpc_endpoints)}")
    print(f"state      {'draining' if status.draining else 'serving'}")
    for model in status.models:
        print(f"model      {model.name}  {model.digest}  queue {model.queue_depth}  "
              f"{model.items_per_second:.1f} items/s")
        devices = ", ".join(model.instance_devices)
        reason = f"  ({model.replicas_reason})" if model.replicas_reason else ""
        print(f"           {len(model.instance_devices)} instance(s) on {devices}{reason}")
    print(f"autoscale  {'on' if status.autoscale else 'off'}")
    _print_events(status.scaling)
    print(f"replicas   {status.replicas or 'off'}, devices {', '.join(status.devices)}")
    _print_events(status.replica_scaling)
    return 0


def _print_events(events: Any) -> None:
    for event in events:
        when = time.strftime("%H:%M:%S", time.localtime(event.at_unix_ns / 1e9))
        error = f"  ({event.error})" if event.error else ""
        where = f" on {event.device}" if event.device else ""
        print(f"  {when} {event.action} {event.model} {event.digest[:19]}{where} "
              f"{event.outcome}{error}\n           why: {event.reason}")


async def _run(config: NodeConfig, perturb: tuple[float, int] = (0.0, 0)) -> None:
    from swarm.node._node import Node
    from swarm.node._service import Perturb

    fraction, seed = perturb
    node = Node(config, perturb=Perturb(fraction, seed) if fraction > 0 else None)
    if fraction > 0:
        logging.getLogger("swarm.node").warning("TEST ONLY: %.0f%% of this node's answers are perturbed "
                    "(--test-perturb-outputs)", fraction * 100)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    await node.start()
    lines = [f"swarm-node {__version__} serving", f"  peer id  {node.peer_id}",
             f"  grpc     {node.grpc_address}"]
    if node.tls_address:
        lines.append(f"  tls      {node.tls_address}")
    if node.metrics_port:
        scheme = "https" if node.http_tls else "http"
        lines.append(f"  metrics  {scheme}://{config.advertise_host}:{node.metrics_port}/metrics")
    lines += [f"  model    {served.name}  {served.digest}" for served in node.table]
    lines += [f"  model    {name}  {g.digest}" for name, g in node.generative.items()]
    if node.http_port:
        scheme = "https" if node.http_tls else "http"
        lines.append(f"  openai   {scheme}://{config.advertise_host}:{node.http_port}/v1")
        lines.append(f"  kserve   {scheme}://{config.advertise_host}:{node.http_port}/v2")
    lines += [f"  p2p      {addr}" for addr in node.multiaddrs]
    if node.mesh is not None:
        lines.append(f"  mesh     {node.mesh.interface} [{node.mesh.address}]:{node.grpc_port}")
    # One write: with stdout and stderr on one file (simnet, systemd), a log line from
    # another thread must not land inside a banner line that tools parse. print() writes
    # the text and the newline separately.
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
    await node.wait_stopped()


def _announce_new_identity(config: NodeConfig) -> None:
    """Say so on stderr when the data dir holds no identity yet (one is created there).

    A mistyped --data-dir would otherwise quietly start a node under a new peer id.
    """
    key = config.key_path.expanduser()
    if not key.exists():
        print(f"swarm-node: no identity in {key.parent}: creating a new one at {key}",
              file=sys.stderr)


def _identity(config: NodeConfig) -> int:
    from swarm.protocol import Identity

    _announce_new_identity(config)
    print(Identity.load_or_create(config.key_path).peer_id)
    state = config.data_dir.expanduser() / "node.json"
    if state.exists():
        info = json.loads(state.read_text())
        print(f"grpc {info['grpc']}")
        if info.get("tls"):
            print(f"tls {info['tls']}")
        for addr in info.get("multiaddrs", []):
            print(addr)
    return 0


def _cert(config: NodeConfig) -> int:
    from swarm.node._certs import load_certificate
    from swarm.protocol import Identity

    _announce_new_identity(config)
    identity = Identity.load_or_create(config.key_path)
    sys.stdout.write(load_certificate(config, identity).cert_pem.decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "mesh":
            from swarm.protocol import mesh_status

            config = load_config(args.config, flags={"data_dir": args.data_dir})
            print(asyncio.run(mesh_status(config.data_dir.expanduser())))
            return 0
        if args.command == "status":
            return _status(args)
        if args.command == "id":
            # The same sources as run (flag, SWARM_DATA_DIR, --config, default), so both
            # commands name the same identity.
            return _identity(load_config(args.config, flags={"data_dir": args.data_dir}))
        if args.command == "cert":
            return _cert(load_config(args.config, flags={"data_dir": args.data_dir}))
        config = _config(args)
        configure_logging(config.log_level, config.log_format)
        # Before importing the node (torch) and loading models: a busy port fails in a
        # fraction of a second, all busy ports in one message. Node.run checks again.
        check_ports(config)
        if config.mesh:
            from swarm.protocol import check_mesh_prerequisites

            check_mesh_prerequisites()
        _announce_new_identity(config)
        if not 0.0 <= args.test_perturb_outputs <= 1.0:
            raise ConfigError("--test-perturb-outputs is a fraction in [0, 1]")
        asyncio.run(_run(config, (args.test_perturb_outputs, args.test_perturb_seed)))
    except ConfigError as exc:
        print(f"swarm-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"swarm-node: cannot load model: {exc}", file=sys.stderr)
        return 1
    except SwarmError as exc:
        print(f"swarm-node: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
