"""The pure core: frames, the switch and its policies, wire formats, crypto sessions, peers, config.

Nothing here imports trio, socket or pyroute2; time is always a parameter.
"""
