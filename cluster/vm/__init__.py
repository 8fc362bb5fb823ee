"""A running VM as operators see it: its name in a registry, and its control API."""
