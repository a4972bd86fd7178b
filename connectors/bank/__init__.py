"""The Bank connector: service units against a myBRC / ColdFront allocation service.

    >>> from slurm_sync.connectors.bank import BankConnector
    >>> BankConnector.name
    'bank'

One module per concern:

    settings.py  the settings, parsed once (``BankSettings``); every default is there
    service.py   the allocation-service interface, myBRC over HTTP, its record and error words
    qos.py       Slurm's QOS side of mode native (scontrol, sacctmgr)
    cost.py      what a job costs (pure)
    model.py     what observe hands plan (``Observed``), the kinds, the keys
    observe.py   reads: the service's answers, NSS's uids, the QOS side and balances
    plan.py      the plan, pure
    limits.py    mode native's QOS limit (pure)
    apply.py     the reports, holds, releases and QOS writes
    commands.py  ``slurm-sync bank reconcile``
    connector.py ``BankConnector``, which wires them together (the entry point's class)
"""

from __future__ import annotations

from slurm_sync.connectors.bank.connector import BankConnector
from slurm_sync.connectors.bank.cost import actual_cost, cost, estimate
from slurm_sync.connectors.bank.model import Observed
from slurm_sync.connectors.bank.plan import plan
from slurm_sync.connectors.bank.service import job_record
from slurm_sync.connectors.bank.settings import BankSettings, Prices

__all__ = [
    "BankConnector",
    "BankSettings",
    "Observed",
    "Prices",
    "actual_cost",
    "cost",
    "estimate",
    "job_record",
    "plan",
]
