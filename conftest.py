"""Test setup: load the lab's pytest plugin unless the installed package already did."""

from importlib.metadata import entry_points

if not any(ep.name == "l2bridge_lab" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["netns.pytest_plugin"]
