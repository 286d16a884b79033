from imfl.cli import app

app(prog_name="imfl")
