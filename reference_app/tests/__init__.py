"""Tests of the reference application, on a real MySQL-compatible server."""
