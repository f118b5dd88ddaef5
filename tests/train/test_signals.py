"""The signal handler: SIGTERM/SIGINT request a graceful stop; a second SIGINT escapes at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from darkknowledge.train.signals import Interrupted, StopRequest, stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_recorded_not_raised(signum):
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signum)
        # Python runs the handler before the next bytecode
        assert stop.requested and stop.signum == signum


def test_handlers_are_restored_after_the_block():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_sigint_raises_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt), stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_a_repeated_sigterm_keeps_the_graceful_stop():
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM


def test_request_is_the_programmatic_signal():
    stop = StopRequest()
    stop.request()
    assert stop.signum == signal.SIGTERM
    stop.request(signal.SIGINT)  # the first request wins
    assert stop.signum == signal.SIGTERM


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def body():
        with stop_on_signals() as stop:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = stop.requested

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"handler": before, "requested": False}


def test_interrupted_exit_codes_and_message():
    exc = Interrupted(signal.SIGTERM, "runs/x/checkpoints/step-000000005")
    assert exc.exit_code == 143
    assert str(exc) == (
        "stopped by SIGTERM; checkpoint saved at runs/x/checkpoints/step-000000005; continue "
        "with --resume auto"
    )
    assert Interrupted(signal.SIGINT, None).exit_code == 130
    assert "nothing to save" in str(Interrupted(signal.SIGINT, None))


def test_a_signal_during_preparation_stops_before_the_first_step(make_cfg, monkeypatch):
    """SIGTERM while the data is being prepared: exit 143 at the next phase boundary, nothing
    trained.
    """
    import importlib
    from pathlib import Path

    from darkknowledge.train import run

    run_module = importlib.import_module("darkknowledge.train.run")
    real = run_module.prepare_data

    def prepare_then_signal(cfg):
        out = real(cfg)
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(run_module, "prepare_data", prepare_then_signal)
    cfg = make_cfg()
    with pytest.raises(Interrupted) as info:
        run(cfg)
    assert info.value.exit_code == 143 and info.value.checkpoint is None
    assert not Path(cfg.run_dir).exists()
