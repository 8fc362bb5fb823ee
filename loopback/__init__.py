"""dQEMU: loopback."""
