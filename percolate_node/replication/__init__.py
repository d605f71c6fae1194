"""High availability: two replicas per tenant, a synchronous standby, fenced failover.

- ``lease``: the leader lease (shared decisions) over ``etcd_lease`` (etcd v3) and
  ``k8s_lease`` (Kubernetes coordination.k8s.io/v1 Lease); its generation is the epoch.
- ``source``: the active's ``Replicate`` stream and the synchronous-write wait.
- ``follower``: the standby applying the active's log (and snapshots) into its own copy.
- ``controller``: a replica's role and the moves between roles.
"""
