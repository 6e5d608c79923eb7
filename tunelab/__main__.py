"""`python -m tunelab` (and `torchrun -m tunelab`): the `tunelab` command."""

from tunelab.cli import app

app()
