"""Named fault mixes for the cluster simulator.

A scenario only sets probabilities and sizes; everything else is decided by
the seeded RNG, so ``(scenario, seed)`` replays one run exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Scenario:
    name: str
    sizes: tuple[int, ...] = (3, 5)
    learners: int = 0  # permanent learners besides the voters
    chaos_ticks: int = 240
    # -- network (time unit: 1/10 of a tick) --------------------------------
    drop: float = 0.0  # per message
    dup: float = 0.0  # per message: deliver a second copy
    delay: tuple[int, int] = (1, 8)  # normal one-way delay, units
    long_delay: float = 0.0  # per message: a long delay (reorders across ticks)
    long_delay_max: int = 80
    partition_rate: float = 0.0  # per tick: start a new partition
    heal_rate: float = 0.05  # per tick: heal the current partition
    one_way: float = 0.3  # a new partition also cuts one random link one way
    unreachable_report: float = 0.5  # a message lost to a partition is reported
    # -- nodes ---------------------------------------------------------------
    crash_rate: float = 0.0  # per tick for the cluster
    max_down: int = 1  # nodes down at once (chaos phase)
    power_failure: float = 0.0  # per tick: every node crashes at once
    restart_after: tuple[int, int] = (3, 50)  # ticks
    async_ready: float = 0.3  # incarnations that step messages while a Ready is persisted
    early_leader_msgs: bool = False  # async leaders send appends/heartbeats before their fsync
    ready_delay: tuple[int, int] = (0, 3)  # units from "has ready" to ready()
    fsync_delay: tuple[int, int] = (0, 6)  # units a Ready spends being persisted (async mode)
    tick_skip: float = 0.02  # a node misses a tick (scheduling hiccup)
    # Per-node clocks: each incarnation's tick periods lie in
    # [TICK, TICK / (1 - drift)] (0: every node ticks on the global tick).
    drift: float = 0.0
    checkpoint_rate: float = 0.1  # per applied batch: state machine becomes durable
    snapshot_count: int = 0  # compact every N applied entries (0: never)
    small_msgs: float = 0.5  # runs with tiny max_size_per_msg / inflight windows
    classic: float = 0.0  # runs with PreVote/CheckQuorum switched off (safety only)
    # -- clients -------------------------------------------------------------
    propose_rate: float = 0.6  # per tick
    batch_max: int = 3
    follower_propose: float = 0.4  # propose through a follower (forwarding)
    read_rate: float = 0.25
    reads_per_tick: int = 1  # read_rate is tried this many times per tick
    # -- lease reads -----------------------------------------------------------
    lease_read: bool = False  # ReadOnlyOption.LEASE_BASED (CheckQuorum forced on)
    lease_bound: float = 0.1  # Config.max_clock_drift
    unsafe: str = ""  # demos only: "restart" / "transfer" disables that lease fix
    transfer_rate: float = 0.0
    membership: bool = False
    member_every: int = 25  # ticks between membership actions


BASE = Scenario("calm")

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        BASE,
        replace(BASE, name="lossy", drop=0.1, dup=0.05, long_delay=0.08, snapshot_count=40),
        replace(
            BASE,
            name="partition",
            drop=0.02,
            partition_rate=0.03,
            heal_rate=0.06,
            long_delay=0.03,
            snapshot_count=30,
        ),
        replace(
            BASE,
            name="crash",
            drop=0.02,
            crash_rate=0.03,
            power_failure=0.004,
            max_down=2,
            snapshot_count=25,
            checkpoint_rate=0.2,
        ),
        replace(
            BASE,
            name="snapshot",
            sizes=(3, 5),
            drop=0.03,
            partition_rate=0.02,
            heal_rate=0.03,
            crash_rate=0.02,
            snapshot_count=8,
            propose_rate=0.9,
        ),
        replace(
            BASE,
            name="transfer",
            drop=0.03,
            dup=0.02,
            transfer_rate=0.06,
            crash_rate=0.01,
            partition_rate=0.01,
            snapshot_count=30,
        ),
        replace(
            BASE,
            name="membership",
            drop=0.02,
            dup=0.02,
            membership=True,
            snapshot_count=20,
            crash_rate=0.01,
            partition_rate=0.01,
            heal_rate=0.08,
            chaos_ticks=320,
        ),
        replace(
            BASE,
            name="chaos",
            drop=0.06,
            dup=0.04,
            long_delay=0.05,
            partition_rate=0.025,
            heal_rate=0.06,
            crash_rate=0.02,
            power_failure=0.002,
            max_down=2,
            snapshot_count=15,
            transfer_rate=0.02,
            membership=True,
            classic=0.15,
            chaos_ticks=320,
        ),
        replace(
            BASE,
            name="learners",
            sizes=(3, 5),
            learners=2,
            drop=0.03,
            partition_rate=0.04,
            heal_rate=0.05,
            crash_rate=0.015,
            snapshot_count=20,
            small_msgs=0.7,
        ),
        replace(
            BASE,
            name="churn",
            sizes=(3, 5),
            drop=0.05,
            long_delay=0.05,
            partition_rate=0.05,
            heal_rate=0.08,
            crash_rate=0.05,
            max_down=2,
            restart_after=(1, 15),
            small_msgs=1.0,
            snapshot_count=30,
            transfer_rate=0.03,
        ),
        replace(
            BASE,
            name="async",
            async_ready=1.0,
            fsync_delay=(0, 25),
            drop=0.03,
            dup=0.03,
            long_delay=0.05,
            partition_rate=0.02,
            heal_rate=0.06,
            crash_rate=0.015,
            snapshot_count=6,
            membership=True,
            member_every=15,
            chaos_ticks=320,
        ),
        replace(
            BASE,
            name="early",
            async_ready=1.0,
            early_leader_msgs=True,
            fsync_delay=(0, 25),
            drop=0.03,
            long_delay=0.04,
            partition_rate=0.02,
            heal_rate=0.06,
            crash_rate=0.04,
            max_down=2,
            restart_after=(1, 20),
            power_failure=0.006,
            snapshot_count=12,
            transfer_rate=0.02,
            membership=True,
            chaos_ticks=320,
        ),
        replace(
            BASE,
            name="single",
            sizes=(1,),
            learners=2,
            async_ready=0.7,
            early_leader_msgs=True,
            drop=0.03,
            partition_rate=0.02,
            heal_rate=0.06,
            crash_rate=0.03,
            power_failure=0.01,
            max_down=2,
            snapshot_count=15,
        ),
    ]
}

# Lease reads under partitions, crashes with quick restarts, leader
# transfers, membership changes and clock drift at the configured bound. A
# missed tick is unbounded drift, hence no tick_skip.
LEASE = replace(
    BASE,
    name="lease",
    lease_read=True,
    drift=0.1,
    tick_skip=0.0,
    drop=0.03,
    dup=0.02,
    long_delay=0.03,
    partition_rate=0.04,
    heal_rate=0.06,
    crash_rate=0.03,
    max_down=2,
    power_failure=0.002,
    restart_after=(1, 12),
    transfer_rate=0.05,
    membership=True,
    snapshot_count=20,
    read_rate=0.8,
    reads_per_tick=3,
    chaos_ticks=320,
)
SCENARIOS[LEASE.name] = LEASE

ORDER = list(SCENARIOS)

# Demonstrations that the lease checks matter: each breaks one assumption of
# the lease and is expected to produce stale reads (not in the default runs).
DEMOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        replace(
            LEASE,
            name="lease-no-restart-fix",
            unsafe="restart",
            sizes=(5,),  # two nodes cut off together campaign; a restarted third one completes the quorum
            membership=False,
            transfer_rate=0.0,
            power_failure=0.0,
            partition_rate=0.08,
            heal_rate=0.01,
            one_way=0.8,
            crash_rate=0.2,
            max_down=2,
            restart_after=(1, 3),
            propose_rate=0.03,  # a candidate cut off for a while must still have an up-to-date log
            reads_per_tick=4,
        ),
        replace(LEASE, name="lease-no-transfer-fix", unsafe="transfer", crash_rate=0.0, power_failure=0.0),
        replace(
            LEASE,
            name="lease-over-drift",
            drift=0.7,
            sizes=(3,),
            transfer_rate=0.0,
            crash_rate=0.0,
            power_failure=0.0,
        ),
    ]
}


def scenario_for_seed(seed: int) -> Scenario:
    return SCENARIOS[ORDER[seed % len(ORDER)]]
