"""Give instances quarantined before the quarantine table existed (issue 2 ledgers) an entry.

Such a ledger marks them ``override = 'quarantined'`` with their reasons as JSON in
``instances.reason``; an operator can only release or discard what has an entry.
"""

import json

from yoyo import step

__depends__ = {"0002_true_health"}


def adopt(conn):
    cur = conn.cursor()
    cur.execute(
        "SELECT sop_instance_uid, study_uid, series_uid, job_id, reason, received_at"
        " FROM instances WHERE override = 'quarantined' AND sop_instance_uid NOT IN"
        " (SELECT sop_instance_uid FROM quarantine)"
    )
    for uid, study, series, job_id, reason, received_at in cur.fetchall():
        try:
            reasons = json.loads(reason or "[]")
        except ValueError:
            reasons = [{"code": "unreadable", "message": (reason or "")[:500]}]
        codes = sorted({str(r.get("code", "")) for r in reasons if isinstance(r, dict)})
        cur.execute(
            "INSERT INTO quarantine (sop_instance_uid, study_uid, series_uid, job_id, codes,"
            " reasons, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)"
            " ON CONFLICT (sop_instance_uid) DO NOTHING",
            (uid, study, series, job_id, json.dumps(codes), json.dumps(reasons), received_at, received_at),
        )


steps = [step(adopt)]
