"""tidings: MySQL/MariaDB row changes pushed to many clients the moment they commit."""

__version__ = "0.1.0"
