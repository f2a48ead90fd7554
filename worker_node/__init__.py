"""The standalone yadtq worker node: ``python -m worker_node --help``."""
