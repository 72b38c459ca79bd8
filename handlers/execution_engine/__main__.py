import sys

from handlers.execution_engine.cli import main

sys.exit(main())
