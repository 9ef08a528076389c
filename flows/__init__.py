"""Deployable Prefect flows: the reference agents and their sample data."""
