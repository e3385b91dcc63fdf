"""What the fork-policy tests share: a parent that wrote private memory, and its child."""

from ptshare import System

BASE = 0x600000000000  # 512 GiB-aligned


def forked(policy: str, size: int, check: bool = True) -> tuple[System, int]:
    """A parent "p" that wrote ``size`` bytes of private anonymous memory at ``BASE``, forked into "c"."""
    s = System(policy, aslr_bits=0, check=check)
    s.spawn("p")
    a = s.mmap("p", size, addr=BASE, fixed=True)
    s.touch("p", a, write=True)
    s.fork("p", "c")
    return s, a
