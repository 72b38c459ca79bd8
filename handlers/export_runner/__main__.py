from handlers.export_runner.cli import run

run()
