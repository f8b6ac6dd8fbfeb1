"""Several replicas of the service behind HAProxy, on one machine (`make cluster`, tests, bench)."""

from cluster.process import ClusterError, Timeout
from cluster.replica import Replica
from cluster.supervisor import Cluster

__all__ = ["Cluster", "ClusterError", "Replica", "Timeout"]
