"""The SDK (routing itself is swarm.routing's; the `swarm` command is swarm.cli's).

_async.py   AsyncClient (grpc.aio): infer, embed, generate, chat, chat_chunks, models, metadata
_generate.py text generation over ModelStreamInfer (Triton decoupled answers); GenerationChunk
_sync.py    Client: the same API, blocking, on a private event-loop thread
_convert.py arrays/tensors <-> Open Inference Protocol messages
_types.py   ModelInfo, TensorInfo
_stakes.py  StakeBook (who is eligible, asked of the nodes joined through) and Payer
            (deposits, a signed cumulative receipt per attempt)
_verify.py  verification of a fraction of requests by a second (and third) provider:
            should_verify, judge (pure), send_verified, Verifier; evidence for staking
"""

from swarm.client._async import AsyncClient
from swarm.client._generate import GenerationChunk
from swarm.client._sync import Client
from swarm.client._types import ModelInfo, TensorInfo
from swarm.client._verify import (
    DEFAULT_VERIFY_FRACTION,
    Verdict,
    Verifier,
    judge,
    send_verified,
    should_verify,
)

__all__ = ["DEFAULT_VERIFY_FRACTION", "AsyncClient", "Client", "GenerationChunk", "ModelInfo",
           "TensorInfo", "Verdict", "Verifier", "judge", "send_verified", "should_verify"]
