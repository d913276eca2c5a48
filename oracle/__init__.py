"""forkspec's oracle: programs, images, backends, the checker and the CLI."""
from .errors import ForkspecError, InvalidArgument, InvalidProgram
from .program import Image, Program, Ref, Step

__version__ = "0.1.0"
