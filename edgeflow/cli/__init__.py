"""The ``edgeflow`` command line."""
