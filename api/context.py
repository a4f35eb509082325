"""What one API replica holds: the ledger, the durable intake, the authenticator, the operations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.config import AppConfig

if TYPE_CHECKING:
    from api.audit import RequestAudit
    from api.auth import Authenticator
    from api.operations import Operations
    from state.ledger import Ledger
    from state.policy_file import PolicyHolder
    from state.spool import SpoolIntake

__all__ = ["ApiContext"]


@dataclass
class ApiContext:
    """The services behind the routes (built by ``api.deployment`` or a test)."""

    cfg: AppConfig
    ledger: Ledger
    intake: SpoolIntake
    auth: Authenticator
    operations: Operations
    audit: RequestAudit
    policy: PolicyHolder | None = None
    """The alert policy (``state.policy_file``); ``None`` where ``clinical.policy_file`` is unset."""

    def close(self) -> None:
        """Flush the request audit and close the ledger."""
        self.audit.close()
        self.ledger.close()
