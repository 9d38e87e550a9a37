"""The SDK (routing itself is swarm.routing's; the `swarm` command is swarm.cli's).

_async.py   AsyncClient (grpc.aio): infer, embed, generate, chat, models, metadata
_generate.py text generation over ModelStreamInfer (Triton decoupled answers)
_sync.py    Client: the same API, blocking, on a private event-loop thread
_convert.py arrays/tensors <-> Open Inference Protocol messages
_types.py   ModelInfo, TensorInfo
_stakes.py  StakeBook (who is eligible, asked of the nodes joined through) and Payer
            (deposits, a signed cumulative receipt per attempt)
"""

from swarm.client._async import AsyncClient
from swarm.client._sync import Client
from swarm.client._types import ModelInfo, TensorInfo

__all__ = ["AsyncClient", "Client", "ModelInfo", "TensorInfo"]
