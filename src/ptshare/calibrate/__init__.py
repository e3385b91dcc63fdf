"""``ptshare calibrate``: this machine's kernel measured, and a cost profile fitted to it.

* :mod:`.families` -- the experiments: host scenarios that vary one size at a time, and which of
  their steps are samples.
* :mod:`.guest` -- keeping the hypervisor's first-touch cost out of the runs.
* :mod:`.experiment` -- each family run on the simulator (event counts) and on the host (times).
* :mod:`.nnls` -- non-negative least squares; :mod:`.fit` -- nanoseconds per event from the samples.
* :mod:`.worker_fork` -- what a host worker's own address space adds to each fork it makes.
* :mod:`.run` -- :func:`calibrate`, all of it; :mod:`.profile` -- the TOML profile written;
  :mod:`.report` -- the table and the JSON; :mod:`.cli` -- the command.
"""

from .fit import Fit, fit
from .nnls import nnls
from .run import Calibration, calibrate

__all__ = ["Calibration", "Fit", "calibrate", "fit", "nnls"]
