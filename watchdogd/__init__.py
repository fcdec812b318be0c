"""watchdogd: keeps JupyterHub on Kubernetes and OpenStack healthy.

Scheduled checks compare what the hub, the proxy, Kubernetes and OpenStack say,
fix what is safe to fix, and tell people about the rest. See DESIGN.md.
"""

__version__ = "0.1.0"
