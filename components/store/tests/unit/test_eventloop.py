"""The daemon's event loop: uvloop by default, asyncio on request, a clear error otherwise."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import uvloop

from keel_store import eventloop


def test_uvloop_is_the_default_and_asyncio_can_be_chosen() -> None:
    assert eventloop.loop_factory({}) is uvloop.new_event_loop
    assert eventloop.loop_factory({"KEEL_STORE_EVENT_LOOP": "UVloop "}) is uvloop.new_event_loop
    assert eventloop.loop_factory({"KEEL_STORE_EVENT_LOOP": "asyncio"}) is asyncio.new_event_loop


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(eventloop.EventLoopChoiceError, match="KEEL_STORE_EVENT_LOOP='trio'"):
        eventloop.loop_factory({"KEEL_STORE_EVENT_LOOP": "trio"})


def test_the_daemon_refuses_an_unknown_loop_before_starting(tmp_path: object) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "keel_store.daemon", f"--data-dir={tmp_path}"],
        env={"KEEL_STORE_EVENT_LOOP": "trio", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "KEEL_STORE_EVENT_LOOP='trio': expected one of uvloop, asyncio" in run.stderr
