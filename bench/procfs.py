"""What the benchmarks read from /proc about a process's memory."""

from __future__ import annotations


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """The high-water mark of ``pid``'s resident memory since its exec (VmHWM, kB); None once it has exited.

    Not wait4's or getrusage's ``ru_maxrss``: Linux keeps the high-water mark of the address space a process had
    before its exec, so a child started by fork or vfork also counts what its parent had resident (a 300 MB Python
    process gives ``/bin/true`` 311 MB)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
