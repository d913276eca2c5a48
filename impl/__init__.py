"""A small x86-64 kernel in Python on Unicorn, with the bug zoo plantable in it.

Subsystems, one module each (the same names as in model/):
- machine.py: Unicorn, emulated physical memory, 4-level page tables, TLB and code-cache flushes.
- frames.py: the frame allocator with reference counts.
- mm.py: address spaces (VMA lists, page-table edits), mmap/munmap/mprotect/brk, uaccess.
- exec.py: the ELF loader (pyelftools) and the initial stack.
- process.py: processes, fork (eager or copy-on-write), vfork, clone, exit, wait4.
- kernel.py: syscall dispatch, faults, the scheduler, reports, observations, raw state.
- zoo.py: the catalogue of plantable bugs (BUGS).
- backend.py: ImplBackend, the Backend the oracle runs.
"""
