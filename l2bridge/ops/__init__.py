"""Operating a site: the command line, ``l2bridge up`` (the daemon), the control socket."""
