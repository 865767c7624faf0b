"""Qustody: a self-hostable, multi-tenant security gateway for quantum jobs."""

__version__ = "0.1.0"
