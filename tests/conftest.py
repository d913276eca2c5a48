"""Settings for every test directory.

Hypothesis's default deadline (200 ms per example) is a timing assertion: on a loaded 2-core CI
machine an example can take longer and the test fails for no fault of the code. Speed targets
live in bench/, so no test has a deadline."""
from hypothesis import settings

settings.register_profile("forkspec", deadline=None)
settings.load_profile("forkspec")
