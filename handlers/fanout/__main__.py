"""``python -m handlers.fanout redrive --dlq-url URL [--dry-run]`` (see ``handlers.fanout.redrive``)."""

import sys

from handlers.fanout.redrive import main

sys.exit(main())
