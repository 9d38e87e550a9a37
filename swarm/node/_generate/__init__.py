"""Text generation: continuous batching over a lean Llama forward.

- `_llama.py`: GGUF reading (gguf package) and the forward pass with its KV cache;
- `_tokenizer.py`: the GGUF's byte-level BPE tokenizer and chat template;
- `_schedule.py`: the pure per-step scheduling decision (running first, admission,
  chunked prefill, preemption);
- `_engine.py`: the async driver per model (`GenerationEngine`), sampling, streaming,
  cancellation;
- `_model.py`: a served generative model and the built-in `builtin/smollm2`;
- `_metrics.py`: vLLM-named Prometheus metrics;
- `_grpc.py`: ModelStreamInfer as a Triton decoupled model, and relaying it (gateway);
- `_kserve.py`: KServe's generate extension (/v2/models/{m}/generate[_stream]);
- `_openai.py`: OpenAI `/v1/chat/completions` and `/v1/completions`.
"""

from swarm.node._generate._engine import (
    Delta,
    EngineStats,
    Generation,
    GenerationEngine,
    RequestTiming,
    SamplingParams,
)
from swarm.node._generate._grpc import GenerationStreams, generation_request, text_of
from swarm.node._generate._kserve import GenerateAPI
from swarm.node._generate._metrics import GenerationMetrics
from swarm.node._generate._model import (
    GENERATIVE_BUILTINS,
    GenerationConfig,
    GenerativeModel,
    generative_offer,
    load_smollm2,
)
from swarm.node._generate._openai import ChatAPI
from swarm.node._generate._schedule import SchedulerConfig, SeqState, Step, schedule

__all__ = [
    "GENERATIVE_BUILTINS",
    "ChatAPI",
    "Delta",
    "EngineStats",
    "GenerateAPI",
    "Generation",
    "GenerationConfig",
    "GenerationEngine",
    "GenerationMetrics",
    "GenerationStreams",
    "GenerativeModel",
    "RequestTiming",
    "SamplingParams",
    "SchedulerConfig",
    "SeqState",
    "Step",
    "generation_request",
    "generative_offer",
    "load_smollm2",
    "schedule",
    "text_of",
]
