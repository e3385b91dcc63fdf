"""The host backend: scenarios run on this machine's kernel, and ``ptshare validate``.

* :mod:`.backend` -- ``ptshare run --backend host`` (:func:`~.backend.run_host`), the safety limits,
  and the results in the JSON contract.
* :mod:`.validate` -- the comparison of host and simulator, and its reports; :mod:`.cli` registers
  ``ptshare validate``.
* :mod:`.plan` -- a scenario run first on the simulator, to place every mapping where it does.
* :mod:`.session` -- a run in progress: workers, objects, cleanup.
* :mod:`.worker` -- the process that plays one scenario process; :mod:`.measure` (with
  ``measure.s``) -- its measured calls; :mod:`.workspace`, :mod:`.channel` -- how it is fed.
* :mod:`.objects` -- ``/dev/shm``, ext4 and hugetlbfs files, and the huge-page reservation.
* :mod:`.syscalls` -- the system calls Python does not offer.
"""
