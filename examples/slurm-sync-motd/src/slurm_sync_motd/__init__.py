"""An example site connector for slurm-sync, in a pip package of its own: ``motd``.

slurm-sync finds it through the entry point ``motd = slurm_sync_motd.connector:MotdConnector``
in the group ``slurm_sync.connectors`` (see this package's pyproject.toml): nothing in
slurm-sync names it.
"""

__version__ = "0.1.0"
