"""The `swarm` command line.

_main.py      main(): the parser and dispatch
_client.py    infer, served (formerly `models`), peers (the SDK)
_chat.py      chat (interactive, with a generative model)
_registry.py  model push|ls|tag|rollback|pull|key (the registry)
_simnet.py    simnet up|virtual (the simulator)
_stake.py     stake bond|unbond|status, ledger balance|history|supply|transfer (the ledger)

Each subcommand's module imports what it needs when it runs, so `swarm --help` imports
neither torch nor libp2p.
"""

from swarm.cli._main import main

__all__ = ["main"]
