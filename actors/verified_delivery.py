"""The verified-SR loop: a reader's review goes back to the PACS as a new, VERIFIED SR (issue 12).

Hosted by the delivery actor (``actors.delivery``), one ``Loop`` beside its stage runner. Each
round takes the pending review submissions (``ledger.clinical.pending_verified``; a newer
submission by the same reader on the same AI SR has superseded the older there), reads the AI SR
the submission concerns from the outbox, builds ``core.sr_verified.verified_sr`` (deterministic
UID: reader, AI SR and the review's version), writes it sealed beside the AI SR in the outbox
directory, and stores it with the delivery's PACS client (C-STORE or STOW-RS, one association
per round). Success is recorded with a ``verified_sr_delivered`` audit event, in one transaction.

A PACS that cannot be reached costs no attempt: the round fails (the loop's health shows it) and
the submission waits for the PACS. A refusal counts an attempt; after ``retry.max_attempts`` the
submission is ``dead`` (``last_error`` says why). A review that does not fit its AI SR (a finding
it does not report) or whose AI SR file is gone can never be built: ``dead`` at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from actors.adapters.dicomweb import DicomwebPacsClient
from actors.adapters.dimse import DimsePacsClient
from actors.polling import Loop, SystemClock
from core.audit import AuditEvent
from core.envelope import EnvelopeError
from core.errors import DependencyUnavailable
from core.ports import Clock
from core.review_submissions import ReviewSubmission, finding_reviews, reader_of, refusal_is_final
from core.sr_verified import ReviewError, verified_sr
from core.types import AuditEventType
from state.ledger import Ledger
from state.sealed_files import dcmread_plain, write_sealed_final

__all__ = ["VerifiedDeliveryWork", "VerifiedSubmissionStore", "verified_sr_loop"]

PERIOD_S = 1.0
"""How often the loop looks for pending submissions (a review reaches the PACS within it)."""

logger = logging.getLogger(__name__)


class VerifiedSubmissionStore(Protocol):
    """The ledger methods the loop needs (``ledger.clinical``; ``state.ledger.clinical_verified``)."""

    def pending_verified(self, limit: int = 20) -> list[ReviewSubmission]: ...  # noqa: D102

    def mark_verified_built(self, submission_id: int, sop_uid: str, path: str) -> None: ...  # noqa: D102

    def mark_verified_delivered(self, submission_id: int, now: float, event: AuditEvent) -> bool: ...  # noqa: D102

    def note_verified_failure(self, submission_id: int, error: str, dead: bool) -> None: ...  # noqa: D102


class VerifiedDeliveryWork:
    """One round of the verified-SR loop (see the module)."""

    def __init__(
        self,
        ledger: Ledger,
        submissions: VerifiedSubmissionStore,
        pacs: DimsePacsClient | DicomwebPacsClient | None,
        outbox: Path,
        actor: str,
        organization: str,
        max_attempts: int,
        clock: Clock | None = None,
        batch: int = 20,
    ) -> None:
        """Args:
        ledger: This process's ledger (the AI SRs' versions and files).
        submissions: The review submissions (``ledger.clinical``).
        pacs: C-STORE SCU or STOW-RS client (``None``: no PACS configured; submissions wait).
        outbox: The outbox directory (the verified SRs are written there, sealed).
        actor: Audit name.
        organization: The Verifying Organization (``sr.institution_name``).
        max_attempts: Refusals before a submission is dead (``retry.max_attempts``).
        clock: Wall clock.
        batch: Most submissions per round.
        """
        self._ledger = ledger
        self._submissions = submissions
        self._pacs = pacs
        self._outbox = outbox
        self._actor = actor
        self._organization = organization
        self._max_attempts = max_attempts
        self._clock = clock or SystemClock()
        self._batch = batch

    def __call__(self) -> int:
        """Build and send the pending verified SRs; returns how many the PACS accepted.

        Raises:
            DependencyUnavailable: No PACS is configured, or it cannot be reached (they wait).
        """
        pending = self._submissions.pending_verified(self._batch)
        if not pending:
            return 0
        if self._pacs is None:
            raise DependencyUnavailable("pacs", "no PACS is configured (config key 'pacs')")
        built: list[tuple[ReviewSubmission, Dataset]] = []
        for submission in pending:
            ds = self._build(submission)
            if ds is not None:
                built.append((submission, ds))
        return self._send(built) if built else 0

    def _build(self, submission: ReviewSubmission) -> Dataset | None:
        """The verified SR, written to the outbox directory (``None``: it can never be built);
        one built in an earlier round (the PACS was down) is read back, not rebuilt."""
        if submission.verified_path and Path(submission.verified_path).exists():
            try:
                return dcmread_plain(submission.verified_path, self._ledger.keyring)
            except (OSError, EnvelopeError, ValueError):
                logger.warning("verified SR of submission %d unreadable; rebuilt", submission.submission_id)
        version = self._ledger.results.version(submission.sr_uid)
        path = self._ai_sr_path(submission)
        try:
            if path is None:
                raise FileNotFoundError(f"AI SR {submission.sr_uid}: not in the outbox")
            ai_sr = dcmread_plain(path, self._ledger.keyring)
            ds = verified_sr(
                ai_sr,
                reader_of(submission, self._organization),
                finding_reviews(submission, version.prediction if version else None),
                submission.final_diagnosis,
                datetime.fromtimestamp(submission.submitted_at, UTC),
                submission.version,
            )
        except (ReviewError, OSError, EnvelopeError, ValueError) as exc:
            error = f"cannot build the verified SR: {type(exc).__name__}: {exc}"
            logger.warning("verified SR of submission %d: %s", submission.submission_id, error[:300])
            self._submissions.note_verified_failure(submission.submission_id, error, dead=True)
            return None
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        final = self._outbox / f"{ds.SOPInstanceUID}.dcm"
        write_sealed_final(final, buf.getbuffer(), self._ledger.keyring)
        self._submissions.mark_verified_built(submission.submission_id, str(ds.SOPInstanceUID), str(final))
        return ds

    def _ai_sr_path(self, submission: ReviewSubmission) -> str | None:
        """The AI SR's file: written by the SR writer into the outbox, named by its UID."""
        found = self._ledger.outbox.published(study_uid=submission.study_uid, sop_instance_uid=submission.sr_uid)
        if found:
            return found[0].path
        guess = self._outbox / f"{submission.sr_uid}.dcm"
        return str(guess) if guess.exists() else None

    def _send(self, built: Sequence[tuple[ReviewSubmission, Dataset]]) -> int:
        assert self._pacs is not None
        outcomes = self._pacs.store([ds for _, ds in built])  # DependencyUnavailable: all wait
        sent = 0
        for (submission, ds), outcome in zip(built, outcomes, strict=True):
            if outcome.ok:
                event = AuditEvent(
                    AuditEventType.VERIFIED_SR_DELIVERED,
                    self._actor,
                    submission.study_uid,
                    str(ds.SOPInstanceUID),
                    None,
                    {
                        "status": f"0x{outcome.status:04X}",
                        "ai_sr": submission.sr_uid,
                        "family": submission.family,
                        "model_version": submission.model_version,
                        "review_version": submission.version,
                        "reader": submission.reader,
                        "submission_id": submission.submission_id,
                    },
                )
                sent += int(
                    self._submissions.mark_verified_delivered(submission.submission_id, self._clock.now(), event)
                )
                continue
            dead = refusal_is_final(submission.attempts, self._max_attempts)
            error = f"PACS answered 0x{outcome.status:04X} for {ds.SOPInstanceUID}"
            logger.warning(
                "verified SR of submission %d refused: %s%s", submission.submission_id, error, " (dead)" * dead
            )
            self._submissions.note_verified_failure(submission.submission_id, error, dead=dead)
        return sent


def verified_sr_loop(
    ledger: Ledger,
    pacs: DimsePacsClient | DicomwebPacsClient | None,
    outbox: Path,
    organization: str,
    max_attempts: int,
    clock: Clock,
    name: str,
) -> Loop:
    """The delivery actor's verified-SR loop (not started)."""
    work = VerifiedDeliveryWork(
        ledger, ledger.clinical, pacs, outbox, "stage:delivery", organization, max_attempts, clock
    )
    return Loop(f"{name}:verified_sr", work, PERIOD_S, eager=True, clock=clock)
