"""Shared by the plan tables: the empty inventory and a one-line view of a plan's actions."""

from __future__ import annotations

from reconciler.core.vocabulary import Inventory, Plan

EMPTY = Inventory()


def kinds(p: Plan) -> list[str]:
    """Each action as "Kind:member" (or "Kind:replica" for MarkReady), in plan order."""
    return [f"{type(a).__name__}:{getattr(a, 'member', getattr(a, 'replica', ''))}"
            for a in p.actions]
