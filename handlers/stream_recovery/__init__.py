"""StreamRecovery: terminal status updates of agent tasks delivered to their push-notification webhooks.

``schema`` (tables, keys, attribute names, task states: one source of truth for the code, the
construct and the tests), ``writer`` (the library the application imports), ``markers`` (the
markers stream record parser and the eligibility rule), ``delivery`` (the signed, SSRF-safe
webhook POST with retries inside a horizon), ``ssrf`` (URL validation and the resolve-once,
check-every-address guard), ``dispatch`` (one marker's eligible configs delivered under claims),
``stream_handler`` and ``sweeper_handler`` (the two Lambda functions), ``settings`` (their
cold-start settings), and the operator CLI (``python -m handlers.stream_recovery``).
"""
