"""The family-neutral engine: settings, tracking of pools and connections, the
detector (a window's one verdict) with its comparison and reclaim, the lock watch, the
runtime that builds them. No pytest import.
"""
