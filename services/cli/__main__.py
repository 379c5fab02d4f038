from services.cli.main import entry

entry()
