"""JobClaim: email instructions routed through a Step Functions flow to the worker that owns their pair.

``schema`` (tables, names), ``email_message`` (parsing, addressing, execution names),
the state machine's functions (``intake``,
``parse_email``, ``attachments``, ``check_active_job``, ``rate_limited_claim``,
``record_interruption``, ``handle_timeout``) and the reference worker (``worker``).
"""
