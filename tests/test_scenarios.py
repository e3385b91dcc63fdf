"""Scenario files: every mistake is reported as FILE:LINE: message, exit status 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptshare.cli.main import main
from ptshare.errors import ScenarioError
from ptshare.scenario import Scenario, load, loads, run
from ptshare.scenario.lines import scan

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
name = "t"

[[objects]]
name = "seg"
kind = "shmem"
size = "4MiB"

[[steps]]
op = "spawn"
pid = "a"

[[steps]]
op = "mmap"
pid = "a"
vma = "m"
object = "seg"
shared = true

[[steps]]
op = "touch"
pid = "a"
vma = "m"
access = "write"
"""


def _write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


BAD = [
    # (replace this, with this, message fragment, line)
    ('op = "touch"', 'op = "tuoch"', "unknown op 'tuoch'", 20),
    ('pid = "a"\nvma = "m"\naccess', 'pid = "b"\nvma = "m"\naccess', "names process 'b', which does not exist", 21),
    ('vma = "m"\naccess', 'vma = "x"\naccess', "has no mapping named 'x'", 22),
    ('size = "4MiB"', 'size = "4 parsecs"', "unknown unit", 6),
    ('size = "4MiB"', 'size = "10 GB"', "size must be a positive multiple of 4 KiB (10 GB is 10,000,000,000 bytes: "
     "GB means 10^9; for powers of 2 write 10GiB)", 6),
    ('size = "4MiB"', 'size = "4M"', "'4M' is ambiguous: write 4MiB for powers of 2 or 4MB for powers of 10", 6),
    ('access = "write"', 'access = "write"\nlength = "1MB"', "length = '1MB' is not a multiple of the 4 KiB page "
     "size (1MB is 1,000,000 bytes: MB means 10^6; for powers of 2 write 1MiB)", 24),
    ('size = "4MiB"', 'size = -4096', "negative", 6),
    ('size = "4MiB"', 'size = "4097"', "multiple of 4 KiB", 6),
    ('access = "write"', 'access = "poke"', "use 'read' or 'write'", 23),
    ('access = "write"', 'access = "write"\ncount = 0', "count", 24),
    ('access = "write"', 'access = "write"\nlength = "1GiB1"', "is not a size", 24),
    ('kind = "shmem"', 'kind = "tmpfs"', "kind = 'tmpfs' is not one of", 5),
    ('access = "write"', 'access = "write"\nspeed = 3', "has no field 'speed'", 24),
    ('access = "write"', 'access = "write"\nrepeat = 0', "repeat", 24),
    ('access = "write"', 'access = "write"\noffset = "99999999999999999999999"', "larger than any address", 24),
    ('object = "seg"', 'object = "nope"', "not declared", 16),
    ('name = "t"', 'name = "t"\n[machine]\nmemry = "1GiB"', "has no key 'memry'", 3),
    ('name = "t"', 'name = "t"\n[machine]\naslr_bits = 99', "aslr_bits", 3),
    ('shared = true', 'shared = "yes"', "true or false", 17),
    ('op = "spawn"\npid = "a"', 'op = "spawn"', "needs a 'pid'", 8),
]


@pytest.mark.parametrize(("old", "new", "message", "line"), BAD)
def test_bad_scenarios_name_file_line_and_problem(tmp_path, capsys, old, new, message, line):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ScenarioError) as err:
        load(path)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ")
    assert main(["run", str(path)]) == 2
    _out, errout = capsys.readouterr()
    assert errout.startswith("ptshare: ") and message in errout and "Traceback" not in errout


@pytest.mark.parametrize(("written", "nbytes"), [("4096", 4096), ("16KiB", 16 << 10), ("2 MiB", 2 << 20),
                                                 ("1TiB", 1 << 40), ("4096kB", 4_096_000), ("4096000 B", 4_096_000),
                                                 ("8.192 MB", 8_192_000), ("32 GB", 32 * 10**9),
                                                 ("4TB", 4 * 10**12)])
def test_sizes_in_si_units_are_powers_of_10_and_binary_units_powers_of_2(written, nbytes):
    sc = loads(GOOD.replace('size = "4MiB"', f'size = "{written}"'))
    assert sc.objects[0].size == nbytes


def test_reported_line_is_the_offending_one(tmp_path):
    path = _write(tmp_path, GOOD.replace('access = "write"', 'access = "poke"'))
    with pytest.raises(ScenarioError) as err:
        load(path)
    assert err.value.line is not None
    assert "access" in path.read_text().splitlines()[err.value.line - 1]


# Text that looks like tables and keys but is inside a value: each goes between the name and the
# first [[objects]] table of GOOD.
DECOYS = {
    "basic multi-line string": '''description = """
quoting a scenario, with an escaped quote \\""" and a line ending in a backslash \\
[[steps]]
op = "exit"
access = "read"
"""
''',
    "literal multi-line string": """description = '''
[[steps]]
access = "read"
'''
""",
    "content ending in a quote": '''description = """
[[steps]]
op = "exit" "\"""
''',
}


@pytest.mark.parametrize("decoy", list(DECOYS))
def test_error_lines_count_multi_line_strings_and_arrays(tmp_path, decoy):
    """An error in a step is reported at that step's line and key, whatever lines above it look like
    [[steps]] or a key inside a string or an array."""
    text = GOOD.replace('name = "t"\n', 'name = "t"\n' + DECOYS[decoy], 1)
    bad = text.replace('access = "write"\n', 'access = "poke"\n')
    path = _write(tmp_path, bad)
    with pytest.raises(ScenarioError, match=r"use 'read' or 'write'") as err:
        load(path)
    assert err.value.line == bad.splitlines().index('access = "poke"') + 1


def test_layout_steps_over_multi_line_arrays_and_inline_tables():
    text = '''name = "t"
[[steps]]
op = "spawn"
list = [
  "[[steps]]",  # [[steps]]
  """
[[steps]]
pid = "x"
""",
  { pid = "y" },
  [1, [2]],
]
pid = "a"  # the key, not the text above
[[ "steps" ]]
'op' = "exit"
'''
    layout = scan(text)
    assert layout.headers == {("steps", 0): 2, ("steps", 1): 14}
    assert layout.keys[("steps", 0)] == {"op": 3, "list": 4, "pid": 13}
    assert layout.keys[("steps", 1)] == {"op": 15}
    assert layout.top == {"name": 1}


def test_invalid_toml(tmp_path):
    path = _write(tmp_path, GOOD + "\n[[steps]\n")
    with pytest.raises(ScenarioError, match=r"not valid TOML"):
        load(path)


def test_missing_file(capsys):
    assert main(["run", "/nonexistent/x.toml"]) == 2
    assert "no such scenario file" in capsys.readouterr().err


def test_unknown_policy(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    assert main(["run", str(path), "--policy", "linux,nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err


def test_touch_outside_every_mapping_is_a_modelled_sigsegv(tmp_path):
    text = GOOD.replace('access = "write"', 'access = "write"\nlength = "8MiB"')
    result = run(loads(text), "linux")
    final = result.final
    assert final.signals and final.signals[0]["signal"] == "SIGSEGV"
    assert final.processes["a"]["alive"] is False


def test_write_to_a_read_only_mapping_is_a_sigsegv():
    sc = Scenario("ro")
    sc.step("spawn", pid="a")
    sc.step("mmap", pid="a", vma="m", size="1MiB", prot="r")
    sc.step("touch", pid="a", vma="m", access="write")
    final = run(sc, "linux").final
    assert final.signals[0]["signal"] == "SIGSEGV"
    assert "does not allow writes" in final.signals[0]["reason"]


def test_using_a_killed_process_is_an_error_with_its_line(tmp_path, capsys):
    text = GOOD.replace('access = "write"', 'access = "write"\nlength = "8MiB"') + \
        '\n[[steps]]\nop = "fork"\npid = "a"\nchild = "b"\n'
    path = _write(tmp_path, text)
    assert main(["run", str(path), "--format", "json"]) == 2
    out, err = capsys.readouterr()
    assert f"{path}:26:" in err and "killed by SIGSEGV" in err
    partial = json.loads(out)
    assert partial["complete"] is False and len(partial["steps"]) == 3  # what ran is kept


def test_out_of_memory_is_reported(tmp_path, capsys):
    text = GOOD.replace('name = "t"', 'name = "t"\n[machine]\nmemory = "2MiB"')
    path = _write(tmp_path, text)
    assert main(["run", str(path)]) == 2
    assert "out of memory" in capsys.readouterr().err


def test_repeat_substitutes_i_everywhere():
    sc = Scenario("r")
    sc.step("spawn", pid="p{i}", repeat=3)
    sc.step("mmap", pid="p{i}", vma="m", size="1MiB", repeat=3)
    sc.step("touch", pid="p{i}", vma="m", pattern="random", count=10, seed="{i}", repeat=3)
    result = run(sc, "linux")
    assert sorted(result.final.processes) == ["p0", "p1", "p2"]


def test_every_shipped_scenario_loads():
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        assert load(path).steps


def test_cli_runs_as_a_module_without_traceback(tmp_path):
    path = _write(tmp_path, GOOD.replace('op = "touch"', 'op = "tuoch"'))
    proc = subprocess.run([sys.executable, "-m", "ptshare", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown op" in proc.stderr


def _run_fails(tmp_path, capsys, text: str, message: str, *argv: str) -> tuple[str, str]:
    path = _write(tmp_path, text)
    assert main(["run", str(path), *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and "Traceback" not in err, err
    assert err.startswith(f"ptshare: {path}:")
    return out, err


SPAWN_P = 'name = "x"\n[[steps]]\nop = "spawn"\npid = "p"\n'


def test_more_than_this_machine_can_simulate_is_an_error_with_what_ran(tmp_path, capsys):
    # 10^15 random accesses, a truncate to 100 PiB, a 128 PiB object: arrays no machine holds.  The
    # error names the step (or the object), and the steps before it are printed.
    touch = SPAWN_P + ('[[steps]]\nop = "mmap"\npid = "p"\nvma = "m"\nsize = "1GiB"\n'
                       '[[steps]]\nop = "touch"\npid = "p"\nvma = "m"\npattern = "random"\ncount = 1000000000000000\n')
    out, _ = _run_fails(tmp_path, capsys, touch, "step 2 (touch): the simulator ran out of this machine's memory",
                        "--format", "json")
    assert json.loads(out)["complete"] is False and len(json.loads(out)["steps"]) == 2
    objects = 'name = "x"\n[[objects]]\nname = "o"\nkind = "shmem"\nsize = "{}"\n[[steps]]\nop = "spawn"\npid = "p"\n'
    truncate = objects.format("4KiB") + '[[steps]]\nop = "truncate"\nobject = "o"\nsize = "100PiB"\n'
    _run_fails(tmp_path, capsys, truncate, "step 1 (truncate): the simulator ran out of this machine's memory")
    _run_fails(tmp_path, capsys, objects.format("128PiB"),
               "object 'o': 128 PiB is more than this machine has the memory to simulate")


def test_a_spawn_the_machine_has_no_memory_for_names_its_step(tmp_path, capsys):
    text = ('name = "x"\n[machine]\nmemory = "1MiB"\n[[steps]]\nop = "spawn"\npid = "p"\n'
            '[[steps]]\nop = "spawn"\npid = "q{i}"\nrepeat = 300\n')
    out, _ = _run_fails(tmp_path, capsys, text, "step 1 (spawn): out of memory", "--format", "json")
    assert len(json.loads(out)["steps"]) == 1  # the first spawn ran and is kept


def test_mremap_outside_the_user_address_space_is_einval(tmp_path, capsys):
    text = SPAWN_P + ('[[steps]]\nop = "mmap"\npid = "p"\nvma = "m"\nsize = "8KiB"\n'
                      '[[steps]]\nop = "mremap"\npid = "p"\nvma = "m"\nsize = "8KiB"\naddr = "0x800000000000"\n')
    _run_fails(tmp_path, capsys, text, "EINVAL: mremap destination 0x800000000000+0x2000 is not inside the user")
    _run_fails(tmp_path, capsys, text.replace("0x800000000000", "0x1000"), "is not inside the user address space")


def test_an_error_in_a_repeated_field_names_the_file(tmp_path, capsys):
    text = SPAWN_P + '[[steps]]\nop = "mmap"\npid = "p"\nvma = "v{i}"\nsize = "{i}MiB"\nrepeat = 3\n'
    _run_fails(tmp_path, capsys, text, "size must be more than 0")


def test_a_device_is_not_read_as_a_scenario(capsys):
    assert main(["run", "/dev/zero"]) == 2
    assert "not a file" in capsys.readouterr().err


def test_truncate_to_zero_is_ftruncate_to_zero():
    sc = loads('name = "z"\n[[objects]]\nname = "o"\nkind = "shmem"\nsize = "1MiB"\n'
               '[[steps]]\nop = "spawn"\npid = "p"\n'
               '[[steps]]\nop = "mmap"\npid = "p"\nvma = "m"\nobject = "o"\nshared = true\n'
               '[[steps]]\nop = "touch"\npid = "p"\nvma = "m"\naccess = "write"\n'
               '[[steps]]\nop = "truncate"\nobject = "o"\nsize = "0"\n'
               '[[steps]]\nop = "touch"\npid = "p"\nvma = "m"\n')
    for policy in ("linux", "shared-pt"):
        final = run(sc, policy, check=True).final
        assert final.processes["p"]["rss_kb"] == 0
        assert final.signals[0]["signal"] == "SIGBUS"
