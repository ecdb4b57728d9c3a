"""Stand-ins for the domain's collaborators in tests that need no processes."""

from __future__ import annotations

from typing import Any

from streamrec.errors import CannotStart


class FakeRecorder:
    """A recorder whose start succeeds or fails as the test says."""

    def __init__(self, fail_with: str | None = None) -> None:
        self.fail_with = fail_with
        self.wanted = False
        self.epoch = 0
        self.calls: list[str] = []

    async def start(self, epoch: int = 0) -> None:
        self.calls.append("start")
        if self.fail_with:
            raise CannotStart(self.fail_with)
        self.wanted = True
        self.epoch = epoch

    def resume(self, epoch: int = 0) -> None:
        self.calls.append("resume")
        self.wanted = True
        self.epoch = epoch

    async def stop(self) -> None:
        self.calls.append("stop")
        self.wanted = False

    def busy(self) -> bool:
        return self.wanted

    def status(self) -> dict[str, Any]:
        return {"state": "recording" if self.wanted else "stopped", "reconnects": 0}
