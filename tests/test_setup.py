"""The test suite's own rules: a missing program skips its test with a reason (fails under CI), and no
test installs anything."""

import re
from pathlib import Path

import pytest

from conftest import need_program


def test_a_missing_program_is_a_skip_naming_it_and_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^chromium is not installed; 'make deps' installs it"):
        need_program(None, "chromium")
    assert need_program("/usr/bin/chromium", "chromium") == "/usr/bin/chromium"


def test_under_ci_a_missing_program_is_a_failure(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"chromium is not installed.*CI is set"):
        need_program(None, "chromium")
    assert need_program("/usr/bin/chromium", "chromium") == "/usr/bin/chromium"


def test_no_test_installs_a_package():
    installer = re.compile(r"""["'](apt-get|apt|dpkg|pip|pip3)["']\s*,""")  # a command line
    for path in Path(__file__).parent.glob("*.py"):
        found = [line for line in path.read_text().splitlines() if installer.search(line)]
        assert not found, f"{path.name} installs packages: {found}; 'make deps' (or pyproject.toml) does that"
