"""Deterministic simulation of whole Raft clusters on the pure core.

``python -m tests.sim --seeds 5000`` is the long run; ``--seed N --scenario X
-v`` replays one run with a trace. See ``cluster.py`` for the model and
``checker.py`` for the invariants.
"""
from .checker import Violation
from .cluster import Sim, run_one
from .scenarios import SCENARIOS, Scenario, scenario_for_seed

__all__ = ["Sim", "run_one", "Violation", "SCENARIOS", "Scenario", "scenario_for_seed"]
