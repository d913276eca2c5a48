"""A small x86-64 kernel in Python on Unicorn, with the bug zoo plantable in it."""
