"""dQEMU: cluster."""
