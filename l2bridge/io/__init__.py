"""The kernel edges: the tap, the UDP sockets, netlink plumbing, CPU latency QoS,
supervised child processes, and the in-memory fakes that stand in for them in tests."""
