"""The names a run chooses among, each list written once.

The config validates against these lists (``expert.teacher``, ``network.actor_head``), and the
packages that implement the names register one class or table per name: the teacher registry
(actors/expert.py ``TEACHERS``) and the actor heads (learner/heads.py ``HEAD_CLASSES``); the replay
client creates one table per name (replay_service/client.py) and the metrics tag by them. Tests check
that each registry holds exactly the names listed here, so a new teacher or head is one class, one
registration and one name here.
"""
from __future__ import annotations

__all__ = ["ACTOR_HEAD_NAMES", "ACTOR_KINDS", "TABLE_NAMES", "TEACHER_NAMES"]

TEACHER_NAMES = ("bfgs", "newton", "compliance", "bfgsls")
"""What a fake step of an expert actor is (``expert.teacher``)."""

ACTOR_HEAD_NAMES = ("free", "preconditioned", "quasi-newton")
"""The policy's output head (``network.actor_head``)."""

TABLE_NAMES = ("expert", "online")
"""The replay tables: fake (teacher) steps go to ``expert``, the policy's own steps to ``online``."""

ACTOR_KINDS = ("online", "expert")
"""Kinds of actor process: ``online`` (the policy plus exploration noise) or ``expert`` (a teacher's fake
steps with the probability of the nfake schedule, else the policy plus noise)."""
