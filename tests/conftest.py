import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=400, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=3000, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="long property-based runs (minutes to hours)")


def pytest_configure(config):
    settings.load_profile("long" if config.getoption("--long") or os.environ.get("PTSHARE_LONG") else "default")


def need_program(found, what: str):
    """``found`` (a program's path, or anything true) when a test's program is installed.  When it is
    not, the test is skipped with a reason naming ``what`` is missing and how to install it -- except
    under CI (the environment variable CI set, as ``.ci/run`` sets it), where it fails: there
    everything the tests need is installed first, so missing means the set-up is broken.  No test
    installs anything."""
    if found:
        return found
    message = f"{what} is not installed; 'make deps' installs it (as root, with apt-get)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}.  CI is set, so a missing program is a failure, not a skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def need():
    """:func:`need_program`, for tests and fixtures: ``need(shutil.which("chromium"), "chromium")``."""
    return need_program


@pytest.fixture(autouse=True)
def _results_db_of_the_tests(tmp_path_factory, monkeypatch):
    """Commands run without --db use a database of the test run's own, never the user's."""
    monkeypatch.setenv("PTSHARE_DB", str(tmp_path_factory.getbasetemp() / "default-results.db"))
