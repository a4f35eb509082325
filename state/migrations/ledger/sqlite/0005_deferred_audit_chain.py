"""SQLite chains audit events inside each transaction (its writers are serialised anyway):
nothing changes here; kept so both dialects share one migration history."""

steps: list = []
