"""Scheduling: backend state, maintenance windows, reservations and sessions.

(Filled in by the change that builds it; until then it does nothing.)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
