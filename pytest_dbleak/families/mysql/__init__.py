"""The MySQL family: MySQL and MariaDB servers (``family.FAMILY``)."""
