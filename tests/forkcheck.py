"""What the real-server fork tests share: whatif's prediction of a live process's fork."""

import json

from ptshare.cli.main import main


def whatif_fork(pid: int, tmp_path, capsys) -> tuple[dict, dict]:
    """Snapshot process ``pid`` and run whatif on it: the document, and the process's fork under linux."""
    path = tmp_path / f"{pid}.npz"
    assert main(["snapshot", "--pid", str(pid), "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["whatif", str(path), "--policy", "linux", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    return doc, doc["processes"][str(pid)]["policies"]["linux"]["fork"]
