"""Real peers (PostgreSQL, JupyterHub + CHP, ...) that integration tests run against."""
