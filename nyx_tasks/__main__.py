from nyx_tasks.cli import app

app()
