"""The names a run chooses among, each list written once.

The config validates against these lists (``expert.teacher``, ``network.actor_head``), and the
packages that implement the names register one class per name: the teacher registry
(actors/expert.py ``TEACHERS``) and the actor heads (learner/heads.py ``HEAD_CLASSES``). Tests check
that each registry holds exactly the names listed here, so a new teacher or head is one class, one
registration and one name here. A replay table is named by its spec (``replay.tables``,
common/replay_tables.py), not by a literal: ``TABLE_NAMES`` are the default tables' names, ``SOURCES``
the words a spec uses for which actor steps it receives.
"""
from __future__ import annotations

__all__ = ["ACTOR_HEAD_NAMES", "ACTOR_KINDS", "CELL_HEAD_NAMES", "CELL_TEACHER_NAMES", "POLICY", "SOURCES", "TABLE_NAMES",
           "TEACHER", "TEACHER_NAMES"]

TEACHER_NAMES = ("bfgs", "newton", "compliance", "bfgsls", "model-hessian")
"""What a fake step of an expert actor is (``expert.teacher``)."""

ACTOR_HEAD_NAMES = ("free", "preconditioned", "quasi-newton", "model-hessian")
"""The policy's output head (``network.actor_head``)."""

CELL_HEAD_NAMES = ("quasi-newton", "model-hessian")
"""The heads that move the cell too (``env.relax_cell``): their initial inverse Hessian covers a cell filter's
generalised rows (learner/heads.py ``moves_cell``)."""

CELL_TEACHER_NAMES = ("bfgs",)
"""The teachers whose fake steps move the cell too (BFGS on the cell filter's rows)."""

TABLE_NAMES = ("expert", "online")
"""The default replay tables, in the order a batch lists them: ``expert`` holds the teachers' fake steps,
``online`` the policy's own (``common.replay_tables.DEFAULT_TABLES``; a config may list others)."""

TEACHER, POLICY = "teacher", "policy"
SOURCES = (TEACHER, POLICY)
"""What a table receives (``TableSpec.source``): ``teacher``, the expert actors' fake steps (with a_expert, the
demonstrations behaviour cloning learns from); ``policy``, every move the policy makes (online actors, and expert
actors between fake steps)."""

ACTOR_KINDS = ("online", "expert")
"""Kinds of actor process: ``online`` (the policy plus exploration noise) or ``expert`` (a teacher's fake
steps with the probability of the nfake schedule, else the policy plus noise). Not table names."""
