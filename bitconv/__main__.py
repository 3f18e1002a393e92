from bitconv.cli import app

app()
