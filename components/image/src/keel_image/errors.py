"""Errors the image builder shows: what failed, the numbers, and how to fix it."""

from __future__ import annotations

from keel_core.errors import KeelError


class BuildError(KeelError):
    """A build step failed; ``hint`` says what to change.

    The build leaves no half-written output behind: stages write into a temporary
    directory and only a complete result is renamed into place.
    """

    def __init__(self, stage: str, message: str, hint: str = "", output: str = "") -> None:
        self.stage = stage
        self.hint = hint
        self.output = output
        """The failed command's whole output (the message shows its tail)."""
        text = f"image build, stage {stage!r}: {message}"
        if hint:
            text += f"\n  fix: {hint}"
        super().__init__(text)
