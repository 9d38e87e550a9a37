"""swarm.routing's status adapter: grpc.StatusCode <-> the one table in swarm._errors.

The same table reads statuses back in the SDK, the Router and the registry client,
and the node's and registry's servicers send them with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import swarm
from swarm._errors import STATUS, code_of, error_for
from swarm._proto.inference import grpc_service_pb2 as pb
from swarm._proto.inference import grpc_service_pb2_grpc as pb_grpc
from swarm._proto.swarm.v1 import registry_pb2, registry_pb2_grpc
from swarm.registry import RegistryClient
from swarm.routing import error_from_rpc, status_of

TABLE_CODES = sorted({code for code, _ in STATUS})
ALL_CODES = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]


def rpc_error_with(code: grpc.StatusCode, details: str = "m") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize("name", TABLE_CODES)
def test_every_table_code_round_trips_through_grpc(name: str) -> None:
    code = grpc.StatusCode[name]  # every name in the table is a real gRPC status
    assert code_of(error_for(name, "m")) == name
    assert status_of(error_from_rpc(rpc_error_with(code), "peer")) is code


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.name)
def test_every_grpc_code_round_trips(code: grpc.StatusCode) -> None:
    error = error_from_rpc(rpc_error_with(code, "queue full"), "10.0.0.1:7070")
    assert status_of(error) is code
    assert str(error) == "10.0.0.1:7070: queue full"


def test_resource_exhausted_is_overloaded() -> None:
    error = error_from_rpc(rpc_error_with(grpc.StatusCode.RESOURCE_EXHAUSTED), "peer")
    assert type(error) is swarm.OverloadedError


def test_missing_details_name_the_status() -> None:
    error = error_from_rpc(rpc_error_with(grpc.StatusCode.UNAVAILABLE, ""), "peer")
    assert str(error) == "peer: UNAVAILABLE"


@pytest.mark.parametrize(("error", "code"), [
    (swarm.InvalidReferenceError("bad digest"), grpc.StatusCode.INVALID_ARGUMENT),
    (swarm.IntegrityError("corrupted"), grpc.StatusCode.DATA_LOSS),
    (swarm.ClosedError("stopping"), grpc.StatusCode.UNAVAILABLE),
    (swarm.ConfigError("x"), grpc.StatusCode.INTERNAL),
    (RuntimeError("bug"), grpc.StatusCode.UNKNOWN),
    (swarm.InferenceError("x", code="NOT_A_STATUS"), grpc.StatusCode.UNKNOWN),
])
def test_local_errors_are_sent_as(error: BaseException, code: grpc.StatusCode) -> None:
    assert status_of(error) is code


# -- one wire, two clients -------------------------------------------------------------------


class _Refusing(pb_grpc.GRPCInferenceServiceServicer, registry_pb2_grpc.RegistryServiceServicer):
    """Aborts every call with the status named by the request's model name."""

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelMetadataResponse:
        await context.abort(grpc.StatusCode[request.name], f"refused {request.name}")
        raise AssertionError("unreachable")

    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelConfigResponse:
        await context.abort(grpc.StatusCode[request.name], f"refused {request.name}")
        raise AssertionError("unreachable")

    async def ListModels(self, request: registry_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> registry_pb2.ListModelsResponse:
        await context.abort(grpc.StatusCode[request.name], f"refused {request.name}")
        raise AssertionError("unreachable")


@pytest.fixture
async def refusing() -> AsyncIterator[str]:
    server = grpc.aio.server()
    servicer = _Refusing()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.mark.parametrize("name", TABLE_CODES)
async def test_registry_client_and_sdk_read_a_status_alike(refusing: str, name: str) -> None:
    async with swarm.AsyncClient(refusing, timeout=5) as sdk:
        with pytest.raises(swarm.InferenceError) as from_sdk:
            await sdk.metadata(name)
    async with RegistryClient(refusing, timeout=5) as registry:
        with pytest.raises(swarm.InferenceError) as from_registry:
            await registry.list_models(name)
    assert type(from_sdk.value) is type(from_registry.value)
    assert from_sdk.value.code == from_registry.value.code == name
    if name == "RESOURCE_EXHAUSTED":  # the registry client once read it as a plain InferenceError
        assert type(from_registry.value) is swarm.OverloadedError
