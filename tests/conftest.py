"""Settings for every test directory.

Hypothesis's default deadline (200 ms per example) is a timing assertion: on a loaded 2-core CI
machine an example can take longer and the test fails for no fault of the code. Speed targets
live in bench/, so no test has a deadline.

CI (`.ci/run`) sets FORKSPEC_HYPOTHESIS_PROFILE=ci: the same examples on every run of a commit
(derandomize), so its verdict is the commit's, not the draw's. Anywhere else each run draws new
examples; exploring at scale is the campaigns' job (`forkspec fuzz`)."""
import os

from hypothesis import settings

settings.register_profile("forkspec", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("FORKSPEC_HYPOTHESIS_PROFILE", "forkspec"))
