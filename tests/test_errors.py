"""The exception tree and its one status table (swarm._errors), without grpc."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import swarm
from swarm._errors import STATUS, code_of, error_class_for, error_for, first_failure
from swarm._types import Digest, ModelRef, PeerId

CODES = sorted({code for code, _ in STATUS})


@pytest.mark.parametrize("code", CODES)
def test_every_code_round_trips(code: str) -> None:
    error = error_for(code, "m")
    assert code_of(error) == code
    assert isinstance(error, error_class_for(code))
    assert isinstance(error, swarm.InferenceError)  # received statuses are request failures
    assert str(error) == "m"


@pytest.mark.parametrize(("code", "cls"), [
    ("INVALID_ARGUMENT", swarm.InvalidInputError),
    ("NOT_FOUND", swarm.ModelNotFoundError),
    ("RESOURCE_EXHAUSTED", swarm.OverloadedError),
    ("DEADLINE_EXCEEDED", swarm.DeadlineExceededError),
    ("UNAVAILABLE", swarm.UnavailableError),
    ("CANCELLED", swarm.UnavailableError),
    ("PERMISSION_DENIED", swarm.PermissionDeniedError),
    ("UNAUTHENTICATED", swarm.PermissionDeniedError),
    ("FAILED_PRECONDITION", swarm.ConflictError),
    ("ABORTED", swarm.ConflictError),
    ("DATA_LOSS", swarm.DataLossError),
    ("INTERNAL", swarm.InferenceError),
    ("UNKNOWN", swarm.InferenceError),
    ("UNIMPLEMENTED", swarm.InferenceError),  # not in the table: still carries its code
])
def test_received_codes_become_their_classes(code: str, cls: type[swarm.SwarmError]) -> None:
    assert error_class_for(code) is cls
    assert code_of(error_for(code, "m")) == code


def test_data_loss_is_caught_as_an_integrity_error() -> None:
    with pytest.raises(swarm.IntegrityError):
        raise error_for("DATA_LOSS", "chunk does not match")


@pytest.mark.parametrize(("error", "code"), [
    # Each class without an explicit code is sent as its own row.
    (swarm.InvalidInputError("m"), "INVALID_ARGUMENT"),
    (swarm.ModelNotFoundError("m"), "NOT_FOUND"),
    (swarm.OverloadedError("m"), "RESOURCE_EXHAUSTED"),
    (swarm.DeadlineExceededError("m"), "DEADLINE_EXCEEDED"),
    (swarm.UnavailableError("m"), "UNAVAILABLE"),
    (swarm.PermissionDeniedError("m"), "PERMISSION_DENIED"),
    (swarm.ConflictError("m"), "ABORTED"),
    (swarm.DataLossError("m"), "DATA_LOSS"),
    (swarm.InferenceError("m"), "INTERNAL"),
    (swarm.ConflictError("m", code="FAILED_PRECONDITION"), "FAILED_PRECONDITION"),
    # Errors raised locally, sent but never received as such.
    (swarm.InvalidReferenceError("m"), "INVALID_ARGUMENT"),
    (swarm.IntegrityError("m"), "DATA_LOSS"),
    (swarm.ClosedError("m"), "UNAVAILABLE"),
    (swarm.NoProviderError("m"), "UNAVAILABLE"),
    (swarm.ConfigError("m"), "INTERNAL"),
    (swarm.UnsafeModelError("m"), "INTERNAL"),
    (ValueError("m"), "UNKNOWN"),  # not ours: a bug
])
def test_sent_codes(error: BaseException, code: str) -> None:
    assert code_of(error) == code


def test_every_class_of_the_table_is_public() -> None:
    for _, cls in STATUS:
        assert getattr(swarm, cls.__name__) is cls


@pytest.mark.parametrize("parse", [
    lambda: Digest.parse("md5:abc"),
    lambda: Digest("xyz"),
    lambda: ModelRef.parse("Not A Name"),
    lambda: ModelRef.parse("org/name:bad tag"),
    lambda: PeerId("0OIl"),
])
def test_malformed_references_are_caught_either_way(parse: Callable[[], object]) -> None:
    with pytest.raises(swarm.InvalidReferenceError) as caught:
        parse()
    assert isinstance(caught.value, ValueError)  # callers written for ValueError still work
    assert code_of(caught.value) == "INVALID_ARGUMENT"


def test_first_failure_notes_every_other_one() -> None:
    group = ExceptionGroup("tasks", [
        swarm.OverloadedError("a"),
        ExceptionGroup("nested", [swarm.UnavailableError("b")]),
        swarm.DeadlineExceededError("c"),
    ])
    first = first_failure(group)
    assert isinstance(first, swarm.OverloadedError)
    assert len(first.__notes__) == 1
    note = first.__notes__[0]
    assert note.startswith("2 other failure(s)")
    assert "UnavailableError: b" in note
    assert "DeadlineExceededError: c" in note


def test_first_failure_alone_gets_no_note() -> None:
    first = first_failure(ExceptionGroup("tasks", [swarm.OverloadedError("a")]))
    assert not hasattr(first, "__notes__")


def test_first_failure_bounds_its_note() -> None:
    first = first_failure(ExceptionGroup("tasks", [swarm.UnavailableError(str(i))
                                                   for i in range(100)]))
    note = first.__notes__[0]
    assert note.startswith("99 other failure(s)")
    assert note.endswith("and 89 more")


async def test_map_reports_every_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three items fail in the same step of the loop: the first is raised as itself,
    the other two ride on its notes (before, they vanished)."""
    async def infer(model: str, x: object, **kwargs: object) -> object:
        raise swarm.OverloadedError(f"item {x} refused")

    async with swarm.AsyncClient("127.0.0.1:1") as client:  # never connects
        monkeypatch.setattr(client, "infer", infer)
        with pytest.raises(swarm.OverloadedError, match="item 0 refused") as caught:
            await client.map("org/model", [0, 1, 2])
    note = "\n".join(caught.value.__notes__)
    assert "item 1 refused" in note
    assert "item 2 refused" in note


async def test_map_success_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    async def infer(model: str, x: int, **kwargs: object) -> int:
        await asyncio.sleep(0)
        return x * 2

    async with swarm.AsyncClient("127.0.0.1:1") as client:
        monkeypatch.setattr(client, "infer", infer)
        assert await client.map("org/model", [1, 2, 3]) == [2, 4, 6]
