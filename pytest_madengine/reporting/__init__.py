"""Reports written by the one process that sees every result (the xdist controller)."""
