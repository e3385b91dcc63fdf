import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=400, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=3000, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="long property-based runs (minutes to hours)")


def pytest_configure(config):
    settings.load_profile("long" if config.getoption("--long") or os.environ.get("PTSHARE_LONG") else "default")
