"""The PostgreSQL server family: a process backend started from a cached ``initdb``
template and the plugin's own admin connection (snapshots of ``pg_stat_activity``, lock
waits through ``pg_blocking_pids()``, provisioning under an advisory lock).

No pytest import. The building blocks of the PostgreSQL family; the checks reach them
through the server-family seam.
"""
