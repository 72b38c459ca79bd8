"""The README's receiver verification snippet verifies what delivery signs, and rejects a changed body."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from handlers.stream_recovery.delivery import generate_signing_secret, sign

README = Path(__file__).resolve().parents[4] / "README.md"


def _snippet_verify() -> Any:
    text = README.read_text()
    section = text[text.index("A\nreceiver verifies like this") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "the README lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    return namespace["verify"]


def test_the_readme_snippet_verifies_our_signature() -> None:
    verify = _snippet_verify()
    secret, timestamp, body = generate_signing_secret(), int(time.time()), b'{"kind":"status-update"}'
    headers = {
        "webhook-id": "msg_0f3a",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_0f3a", timestamp, body),
    }
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(generate_signing_secret(), headers, body)
    assert not verify(secret, {**headers, "webhook-timestamp": str(timestamp - 3600)}, body)
