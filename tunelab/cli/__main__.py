from tunelab.cli import app

app()
