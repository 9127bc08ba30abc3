"""l2bridge: join Ethernet LANs at layer 2 over UDP."""

__version__ = "0.1.0"
