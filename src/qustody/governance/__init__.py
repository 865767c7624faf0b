"""Governance: the controls that keep a shared, metered, scarce resource safe
from abuse, runaway spend and privilege creep.

Quotas and usage, rate limits, costs and spending limits, approvals,
just-in-time elevation, break-glass, reservations and sessions. The jobs
service consults these at submission (:mod:`qustody.governance.admission`);
the worker's scheduler at claiming. Every rule reads the time from a
:class:`qustody.domain.clock.Clock`, so tests drive expiries exactly.
"""
