"""Venue connectors: one interface (base.py), one module per venue. Imports nothing of ours."""
