"""How the denoiser's two row halves hand each other a self-attention layer's keys and values: each
waits only for the halves its rows may attend to, and stops when the other half has failed."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lepetpal_tui.policy.speed.decoder_layer import KVExchange, attention_needs

ROWS = [(0, 3), (3, 6)]
PREFIX = 2


def _mask(suffix: torch.Tensor) -> torch.Tensor:
    """Boolean [1, 6, PREFIX + 6] mask: every row sees the prefix, `suffix` [6, 6] says the rest."""
    return torch.cat([torch.ones(6, PREFIX, dtype=torch.bool), suffix], dim=1)[None]


@pytest.mark.parametrize(("suffix", "want"), [
    (torch.ones(6, 6, dtype=torch.bool).tril(), [[0], [0, 1]]),  # causal: SmolVLA's action tokens
    (torch.ones(6, 6, dtype=torch.bool), [[0, 1], [0, 1]]),  # bidirectional
    (torch.ones(6, 6, dtype=torch.bool).triu(), [[0, 1], [1]]),  # anti-causal
    (torch.eye(6, dtype=torch.bool), [[0], [1]]),  # each row only itself
])
def test_a_half_needs_the_halves_its_rows_may_attend_to(suffix: torch.Tensor, want: list[list[int]]) -> None:
    assert attention_needs(_mask(suffix), ROWS, PREFIX) == want


def _kv(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((1, 1, 3, 2), float(i)), torch.full((1, 1, 3, 2), 10.0 + i)


def test_the_first_half_of_causal_rows_goes_on_without_the_second() -> None:
    exchange = KVExchange(layers=1, needs=[[0], [0, 1]])
    barrier = threading.Barrier(2)  # the second half never comes
    got: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    first = threading.Thread(target=lambda: got.append(exchange.gather(0, 0, barrier)(*_kv(0))))
    first.start()
    first.join(timeout=5)
    waited = first.is_alive()
    barrier.abort()  # lets a waiting first half go (with an error), so a failure here does not hang
    assert not waited and got
    ks, vs = got[0]
    assert [float(k[0, 0, 0, 0]) for k in ks] == [0.0] and [float(v[0, 0, 0, 0]) for v in vs] == [10.0]


def test_the_second_half_waits_for_the_first_and_gets_both_in_row_order() -> None:
    exchange = KVExchange(layers=2, needs=[[0], [0, 1]])
    barrier = threading.Barrier(2)
    got: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    second = threading.Thread(target=lambda: got.append(exchange.gather(1, 1, barrier)(*_kv(1))))
    second.start()
    time.sleep(0.2)
    assert second.is_alive() and not got  # the first half's layer-1 keys are not in yet
    exchange.gather(1, 0, barrier)(*_kv(0))
    second.join(timeout=5)
    assert not second.is_alive()
    ks, vs = got[0]
    assert [float(k[0, 0, 0, 0]) for k in ks] == [0.0, 1.0] and [float(v[0, 0, 0, 0]) for v in vs] == [10.0, 11.0]


def test_a_waiting_half_stops_when_the_other_has_failed() -> None:
    exchange = KVExchange(layers=1, needs=[[0, 1], [0, 1]])
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            exchange.gather(0, 1, barrier)(*_kv(1))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.1)
    barrier.abort()  # what run_halves does when the other half raises
    thread.join(timeout=5)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], threading.BrokenBarrierError)
