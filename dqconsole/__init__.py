"""dQEMU: dqconsole."""
