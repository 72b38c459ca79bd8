"""StreamRecovery: terminal status updates of agent tasks delivered to their push-notification webhooks.

Built so far: ``delivery`` (the signed, SSRF-safe webhook POST with retries inside a horizon)
and ``ssrf`` (URL validation and the resolve-once, check-every-address guard). The writer
library, stream handler, sweeper and claims come next (``../shared/specs/03-stream-recovery.md``).
"""
