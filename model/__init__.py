"""The reference model: processes, address spaces and syscalls with Linux x86-64 semantics."""
