"""Test setup: the suite's hypothesis profile, and the lab's pytest plugin.

The profile keeps hypothesis from judging the machine's speed: no per-example
deadline and no too_slow health check, since input generation and examples take
several times longer on a loaded 2-core CI machine than on an idle one.  Every
other health check stays on.  Per-test ``@settings(...)`` inherit from it.
"""

from importlib.metadata import entry_points

from hypothesis import HealthCheck, settings

settings.register_profile(
    "l2bridge", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("l2bridge")

if not any(ep.name == "l2bridge_lab" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["netns.pytest_plugin"]
