"""NodeConfig loading: flags > environment (SWARM_*) > TOML > defaults, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from swarm._errors import ConfigError
from swarm.node import ModelOptions, NodeConfig, load_config
from swarm.node._cli import _config as cli_config
from swarm.node._cli import _parser as cli_parser


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source() -> None:
    assert load_config(None, env={}, flags={}) == NodeConfig()


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    file = toml(tmp_path, 'grpc_port = 1001\nmetrics_port = 1002\nlog_level = "debug"\n'
                          'drain_timeout = 3.5\n')
    env = {"SWARM_GRPC_PORT": "2001", "SWARM_METRICS_PORT": "2002", "HOME_UNRELATED": "x"}
    config = load_config(file, env=env, flags={"grpc_port": 3001})
    assert config.grpc_port == 3001  # flag
    assert config.metrics_port == 2002  # environment
    assert config.log_level == "debug"  # file
    assert config.drain_timeout == 3.5  # file
    assert config.log_format == NodeConfig().log_format  # default
    # A flag left unset (None, or an empty repeatable) does not hide lower layers.
    unset = load_config(file, env=env, flags={"grpc_port": None, "serve": ()})
    assert unset.grpc_port == 2001
    assert load_config(file, env={}, flags={}).grpc_port == 1001


def test_value_types_from_every_layer(tmp_path: Path) -> None:
    file = toml(tmp_path, 'data-dir = "~/swarm-test-data"\nserve = ["builtin/mlp"]\n')
    config = load_config(file, env={}, flags={})
    assert config.data_dir == Path("~/swarm-test-data").expanduser()
    assert config.serve == ("builtin/mlp",)
    from_env = load_config(file, env={"SWARM_SERVE": "builtin/mlp, builtin/minilm,",
                                      "SWARM_DRAIN_TIMEOUT": "2.5"}, flags={})
    assert from_env.serve == ("builtin/mlp", "builtin/minilm")
    assert from_env.drain_timeout == 2.5
    flagged = load_config(file, env={}, flags={"serve": ("x/a.pt2",), "data_dir": tmp_path})
    assert flagged.serve == ("x/a.pt2",)
    assert flagged.data_dir == tmp_path


def test_model_tables(tmp_path: Path) -> None:
    file = toml(tmp_path, """
[models."builtin/mlp"]
max_batch_size = 32
max_queue_delay = 0.001
preferred_batch_sizes = [8, 16]
max_queue_size = 100
cache = true

[models."*"]
batching = false
""")
    config = load_config(file, env={}, flags={})
    assert config.model_options("builtin/mlp") == ModelOptions(
        max_batch_size=32, max_queue_delay=0.001, preferred_batch_sizes=(8, 16),
        max_queue_size=100, cache=True)
    assert config.model_options("builtin/minilm") == ModelOptions(batching=False)
    assert load_config(None, env={}, flags={}).model_options("any/model") == ModelOptions()


def test_batching_flags_apply_to_every_model_and_win_over_tables(tmp_path: Path) -> None:
    file = toml(tmp_path, '[models."builtin/mlp"]\nmax_batch_size = 32\ncache = true\n')
    args = cli_parser().parse_args(["run", "--config", str(file), "--max-batch-size", "4",
                                    "--max-queue-delay-ms", "5", "--no-batching"])
    config = cli_config(args)
    mlp = config.model_options("builtin/mlp")
    assert (mlp.max_batch_size, mlp.max_queue_delay, mlp.batching, mlp.cache) == (4, 0.005, False, True)
    other = config.model_options("other/model")
    assert (other.max_batch_size, other.batching, other.cache) == (4, False, False)


@pytest.mark.parametrize(("text", "fragment"), [
    ("grpc_port = 1\nbogus = 2\n", "bogus"),
    ('[models."builtin/mlp"]\nmax_batch = 4\n', "max_batch"),
    ('grpc_port = "seventy"\n', "grpc_port"),
    ("grpc_port = 7070.5\n", "grpc_port"),
    ("grpc_port = true\n", "grpc_port"),
    ("drain_timeout = [1]\n", "drain_timeout"),
    ("listen_host = 5\n", "listen_host"),
    ('[models."builtin/mlp"]\ncache = "maybe"\n', "cache"),
    ('[models."builtin/mlp"]\nmax_batch_size = -1\n', "max_batch_size"),
    ('[models."builtin/mlp"]\nmax_queue_size = 0\n', "max_queue_size"),
    # Peers refuse adverts stating a larger batch or a deeper queue.
    ('[models."builtin/mlp"]\nmax_batch_size = 2_000_000\n', "max_batch_size must be in"),
    ('[models."builtin/mlp"]\nmax_queue_size = 20_000_000\n', "max_queue_size must be in"),
    ('[models."builtin/mlp"]\nmax_queue_delay_fraction = 2\n', "max_queue_delay_fraction"),
    ('[models."builtin/mlp"]\npreferred_batch_sizes = [0, 4]\n', "preferred_batch_sizes"),
    ('[models."builtin/mlp"]\npreferred_batch_sizes = [4, "x"]\n', "preferred_batch_sizes"),
    ('[models."builtin/mlp"]\nmax_queue_delay = nan\n', "max_queue_delay"),
    ("models = 3\n", "models"),
    ('[models]\n"builtin/mlp" = 3\n', "builtin/mlp"),
    ("grpc_port = 70000\n", "grpc_port"),
    ("max_served_batch_size = 2_000_000\n", "max_served_batch_size must be in"),
    ("grpc_port = -1\n", "grpc_port"),
    ("metrics_port = -2\n", "metrics_port"),
    ('log_format = "xml"\n', "log_format"),
    ('log_level = "verbose"\n', "log_level"),
    ("drain_timeout = -1\n", "drain_timeout"),
    ("cache_max_bytes = 0\n", "cache_max_bytes"),
    ("max_message_bytes = 10\n", "max_message_bytes"),
    ('serve = ["Not A Model"]\n', "Not A Model"),
    ("grpc_port = \n", "node.toml"),
])
def test_bad_file_is_a_config_error_naming_the_problem(tmp_path: Path, text: str,
                                                       fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(toml(tmp_path, text), env={}, flags={})


def test_bad_environment_and_flags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SWARM_GRPC_PORT"):
        load_config(None, env={"SWARM_GRPC_PORT": "http"}, flags={})
    with pytest.raises(ConfigError, match="grpc-port"):
        load_config(None, env={}, flags={"grpc_port": "x"})
    with pytest.raises(ConfigError, match="unknown flag"):
        load_config(None, env={}, flags={"grpc_prot": 1})
    with pytest.raises(ConfigError, match="Not/A/Model"):
        load_config(None, env={}, flags={"serve": ("builtin/mlp", "Not/A/Model")})
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml", env={}, flags={})
    # Other SWARM_* variables are not settings and are ignored.
    assert load_config(None, env={"SWARM_HOME": "/x"}, flags={}) == NodeConfig()


@pytest.mark.parametrize("argv", [
    ["--max-batch-size", "-1"],
    ["--max-queue-size", "0"],
    ["--max-queue-delay-ms", "-5"],
    ["--serve", "builtin/MLP"],
    ["--grpc-port", "65536"],
    ["--generation-max-seqs", "0"],
    ["--generation-step-tokens", "0"],
    ["--generation-max-len", "1"],
    ["--generation-kv-tokens", "2048"],  # cannot hold one sequence of the default 2048
])
def test_bad_command_line_is_a_config_error(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        cli_config(cli_parser().parse_args(["run", *argv]))


def test_generation_limits_from_flags_and_file(tmp_path: Path) -> None:
    file = toml(tmp_path, 'generation_max_seqs = 8\ngeneration_weights = "fp32"\n')
    args = cli_parser().parse_args(["run", "--config", str(file), "--generation-max-len", "512",
                                    "--generation-kv-tokens", "4096",
                                    "--generation-step-tokens", "128"])
    config = cli_config(args)
    assert (config.generation_max_seqs, config.generation_step_tokens, config.generation_kv_tokens,
            config.generation_max_len, config.generation_weights) == (8, 128, 4096, 512, "fp32")
    assert NodeConfig().generation_weights == "int4"
    with pytest.raises(ConfigError, match="generation_weights"):
        load_config(None, env={"SWARM_GENERATION_WEIGHTS": "int2"}, flags={})


def test_model_options_refuse_invalid_values() -> None:
    with pytest.raises(ConfigError):
        ModelOptions(max_batch_size=-1)
    with pytest.raises(ConfigError):
        ModelOptions(preferred_batch_sizes=(0,))
    assert ModelOptions(max_batch_size=0).max_batch_size == 0  # 0 = the model's own default


def test_presets() -> None:
    local = NodeConfig.local(Path("/tmp/x"))
    assert (local.grpc_port, local.metrics_port, local.listen_host) == (0, 0, "127.0.0.1")
    wan = NodeConfig.wan(Path("/tmp/x"), advertise_host="203.0.113.7")
    assert (wan.listen_host, wan.advertise_host) == ("0.0.0.0", "203.0.113.7")
    assert NodeConfig().key_path == NodeConfig().data_dir / "identity.key"


def test_registry_settings_from_toml(tmp_path: Path) -> None:
    key = "ab" * 32
    path = tmp_path / "node.toml"
    path.write_text(f'replication_factor = 2\n\n[allowlist]\nacme = ["{key}"]\nother = "{key}"\n')
    config = load_config(path, env={})
    assert config.replication_factor == 2
    assert config.allowlist == {"acme": (key,), "other": (key,)}


@pytest.mark.parametrize("body", [
    'replication_factor = 0\n',
    '[allowlist]\nacme = ["not-hex"]\n',
    '[allowlist]\nacme = []\n',
    'allowlist = "acme"\n',
])
def test_bad_registry_settings_are_config_errors(tmp_path: Path, body: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(body)
    with pytest.raises(ConfigError):
        load_config(path, env={})
