"""StreamRecovery: terminal status updates of agent tasks delivered to their push-notification webhooks.

Built so far: ``schema`` (the tables' keys, attribute names and terminal states: one source of
truth for the code, the construct and the tests), ``writer`` (the library the application
imports: ``StreamRecoveryWriter.commit_status_update`` / ``register_push_config`` /
``delete_push_config``), ``markers`` (the markers stream record parser and the eligibility
rule), ``delivery`` (the signed, SSRF-safe webhook POST with retries inside a horizon) and
``ssrf`` (URL validation and the resolve-once, check-every-address guard). The stream handler,
sweeper, deliveries claims and construct come next (``../shared/specs/03-stream-recovery.md``).
"""
