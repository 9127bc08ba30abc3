"""The lab: build multi-site layer-2 topologies in network namespaces and check them."""
