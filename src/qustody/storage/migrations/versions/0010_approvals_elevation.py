"""Approvals, just-in-time elevation and break-glass.

(Filled in by the change that builds it; until then it does nothing.)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
