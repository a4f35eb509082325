"""Issue 2 ledgers were SQLite only: nothing to adopt on PostgreSQL (kept so both dialects
share one migration history)."""

__depends__ = {"0002_true_health"}

steps: list = []
