"""The bottom layer: types every other package shares, importing nothing else of the project.

``common.observation`` (what an actor sees), ``common.transition`` (what the replay stores),
``common.errors`` (the base of expected failures), ``common.config`` (every setting, one home
each), ``common.names`` (the teacher, actor-head and table names the settings choose among),
``common.schedules`` (coefficients as functions of a counter) and ``common.metrics`` (metric
names, units and help text). See docs/ARCHITECTURE.md.
"""
