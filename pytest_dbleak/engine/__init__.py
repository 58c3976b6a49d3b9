"""The family-neutral engine: settings, tracking of pools and connections, the
detector, the lock watch, the runtime that builds them. No pytest import.
"""
