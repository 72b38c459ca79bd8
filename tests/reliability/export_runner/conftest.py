from tests.support.export_fixtures import (  # noqa: F401 - fixtures shared with the reliability tests
    export_db,
    export_queue,
    export_template,
    exports_bucket,
    fresh_export_clients,
    runner_env,
)
