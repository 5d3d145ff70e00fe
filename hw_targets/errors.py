"""Errors a hardware target raises for input it cannot take (no project imports: the bottom layer).

Every message names what is wrong and where, in one line. The CLI prints them as
``stft-neuro: error: <message>`` (exit 1) exactly like the application's own ``UserError``.
"""
from __future__ import annotations


class TargetError(ValueError):
    """A network, plan or input that the hardware target cannot take."""


class DesignRuleError(TargetError):
    """A network breaks one or more of the target's design rules (``rules.ensure_deployable``)."""


class ChipInputError(TargetError):
    """A payload or threshold modulation sent to the chip is not what the plan allows
    (wrong shape, not finite, not an integer, or outside Loihi's range)."""


class PlanFormatError(TargetError):
    """A saved deployment plan is missing, corrupted, of another format version, or inconsistent."""
