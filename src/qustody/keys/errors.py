"""Errors of key management: data whose keys are switched off or gone."""

from __future__ import annotations

from qustody.domain.errors import QustodyError


class KeysDisabled(QustodyError):
    """The keys protecting this data are disabled: nothing is sealed or
    opened under them until a tenant admin or operator enables them."""

    code = "keys_disabled"
    status = 423
    title = "Encryption keys disabled"


class DataDestroyed(QustodyError):
    """The keys protecting this data were destroyed (crypto-shredded); the
    data can never be read again, and no new data is sealed under them."""

    code = "data_destroyed"
    status = 410
    title = "Data destroyed"


class CustomerKeyUnavailable(QustodyError):
    """A tenant's own key (in its own HSM) refused to work: disabled,
    removed, or the token is unreachable. Only the tenant can fix this."""

    code = "customer_key_unavailable"
    status = 423
    title = "Customer-managed key unavailable"
