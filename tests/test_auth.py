"""Auth key primitives."""

from service.auth import generate_key, hash_key, is_key_hash, matches


def test_keys_are_long_random_and_stored_only_as_hashes() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert key.startswith("psk_") and len(key) >= 4 + 43
    digest = hash_key(key)
    assert is_key_hash(digest) and key not in digest
    assert matches(key, ["sha256:" + "0" * 64, digest])
    assert not matches(key, ["sha256:" + "0" * 64])
    assert not matches(key + "x", [digest])
    assert not is_key_hash("sha256:xyz")
