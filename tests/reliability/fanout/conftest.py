from tests.support.fanout_fixtures import (  # noqa: F401 - fixtures are found by name
    fanout,
    fanout_env,
    github,
    github_secret_arn,
    invoke,
    tables,
    verified_sender,
)
