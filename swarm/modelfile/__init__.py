"""Safe model formats: loading without running code from the file, and spec extraction.

_export.py  torch.export programs (.pt2): every archive member checked before torch sees
            it (pickles must load with weights_only=True), `load_program`, and
            `program_spec` (inputs, outputs, batch bound) from the exported graph

Used by the node (to serve) and the registry (to describe what it publishes). Importing
this package imports torch.
"""

from swarm.modelfile._export import (
    MAX_ARCHIVE_BYTES,
    MAX_UNPACKED_BYTES,
    check_archive,
    load_program,
    oip_datatype,
    program_spec,
)
from swarm.modelfile._tolerance import BUILTIN_TOLERANCES, parse_tolerance

__all__ = [
    "BUILTIN_TOLERANCES",
    "MAX_ARCHIVE_BYTES",
    "MAX_UNPACKED_BYTES",
    "check_archive",
    "load_program",
    "oip_datatype",
    "parse_tolerance",
    "program_spec",
]
