"""What a job costs in service units: ``price(partition) x cpus x hours``, rounded half-up to
2 decimals, as slurm-banking-plugins round.

    >>> cost(Decimal("0.75"), 4, 5400)
    Decimal('4.50')

Before a job starts the estimate uses its time limit, requested cpus and, for a job that may run
on several partitions, the highest of their prices; after it ends the actual cost uses its
allocated cpus and elapsed time. A partition without a price is free or refused, as the
``unpriced`` setting says (``Prices``), never a silent 0.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from slurm_sync.connectors.bank.settings import Prices
from slurm_sync.slurm.model import Job

__all__ = ["CENT", "actual_cost", "cost", "estimate"]

CENT = Decimal("0.01")


def cost(price: Decimal, cpus: int, seconds: float) -> Decimal:
    """`cost(Decimal("0.75"), 4, 5400)` is 4.50: price x cpus x hours, half-up to cents."""
    hours = Decimal(str(max(seconds, 0))) / Decimal(3600)
    return (price * cpus * hours).quantize(CENT, rounding=ROUND_HALF_UP)


def estimate(job: Job, prices: Prices) -> Decimal | str:
    """What a job may cost before it starts (time limit x requested cpus), or why it cannot be
    estimated."""
    price = prices.of(job.partition)
    if price is None:
        return f"partition {job.partition} has no price"
    if job.time_limit is None:
        return "no time limit: the cost cannot be bounded"
    cpus = job.tres_requested.get("cpu") or job.cpus or 0
    return cost(price, int(cpus), job.time_limit * 60)


def actual_cost(job: Job, prices: Prices) -> Decimal | str:
    """What an ended run cost: allocated cpus x elapsed time, at its partition's price."""
    price = prices.of(job.partition)
    if price is None:
        return f"partition {job.partition} has no price"
    if not job.start_time or not job.end_time:
        return "no start or end time"
    cpus = job.tres_allocated.get("cpu") or job.cpus or 0
    return cost(price, int(cpus), job.end_time - job.start_time)
