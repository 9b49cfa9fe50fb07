"""The store server: the member (Raft + disk + peers) and the etcd v3 gRPC API."""
