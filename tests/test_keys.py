from __future__ import annotations

import hmac
import random
import re
import string

import pytest

from relay.errors import AuthError
from relay.identity import keys
from relay.identity.keys import (
    KEY_LENGTH,
    KEY_PATTERN,
    CacheLookup,
    KeyHasher,
    ParsedKey,
    VerifiedKeyCache,
    generate_key,
    hash_secret,
    mask_key,
    parse_key,
)

CHEAP_HASHER = KeyHasher(time_cost=1, memory_cost_kib=8, parallelism=1)
ALNUM = string.ascii_letters + string.digits


class CountingHasher:
    """A fake hasher that counts verifies, to prove the cache spares argon2."""

    def __init__(self) -> None:
        self.verify_calls = 0

    def hash(self, full_key: str) -> str:
        return "fake$" + full_key

    def verify(self, stored_hash: str, full_key: str) -> bool:
        self.verify_calls += 1
        return stored_hash == "fake$" + full_key


def authenticate(
    raw: str, stored_hash: str, cache: VerifiedKeyCache, hasher: CountingHasher
) -> bool:
    """The request-path flow documented on VerifiedKeyCache (without the to_thread hop)."""
    key = parse_key(raw)
    lookup = cache.lookup(key)
    if lookup is CacheLookup.VERIFIED:
        return True
    if lookup is CacheLookup.MISMATCH:
        return False
    if hasher.verify(stored_hash, key.full_key):
        cache.remember(key)
        return True
    return False


def test_generated_key_round_trips_through_parse() -> None:
    new = generate_key()
    parsed = parse_key(new.secret)
    assert parsed == ParsedKey(key_id=new.key_id, full_key=new.secret)
    assert new.secret.startswith(f"rk_{new.key_id}_")
    assert len(new.secret) == KEY_LENGTH == 65
    assert new.last4 == new.secret[-4:]


def test_key_id_is_twelve_lowercase_base32_chars() -> None:
    for _ in range(50):
        key_id = generate_key().key_id
        assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{12}", key_id)


def test_secret_carries_at_least_256_bits() -> None:
    new = generate_key()
    secret_part = new.secret[len("rk_") + 12 + 1 : -6]
    assert len(secret_part) == 43
    assert secret_part.isascii() and secret_part.isalnum()
    assert 62 ** len(secret_part) >= 2**256
    assert len({generate_key().secret for _ in range(200)}) == 200


def test_secret_scanner_pattern_finds_keys_in_text() -> None:
    new = generate_key()
    text = f'OPENAI_API_KEY="{new.secret}"\nother=rk_short_abc'
    assert re.findall(KEY_PATTERN, text) == [new.secret]
    assert re.search(KEY_PATTERN, new.secret + "x") is None


def test_repr_never_shows_the_secret() -> None:
    new = generate_key()
    assert new.secret not in repr(new)
    assert new.secret not in repr(parse_key(new.secret))


def test_every_single_character_substitution_is_rejected() -> None:
    rng = random.Random(1234)
    for _ in range(20):
        raw = generate_key().secret
        for _ in range(100):
            pos = rng.randrange(len(raw))
            replacement = rng.choice([c for c in ALNUM if c != raw[pos]])
            typo = raw[:pos] + replacement + raw[pos + 1 :]
            with pytest.raises(AuthError):
                parse_key(typo)


def test_adjacent_transpositions_are_rejected() -> None:
    raw = generate_key().secret
    for pos in range(len(raw) - 1):
        if raw[pos] == raw[pos + 1]:
            continue
        swapped = raw[:pos] + raw[pos + 1] + raw[pos] + raw[pos + 2 :]
        with pytest.raises(AuthError):
            parse_key(swapped)


def test_the_checksum_is_read_back_exactly_as_it_is_written() -> None:
    rng = random.Random(19)
    for _ in range(500):
        body = "rk_" + "".join(rng.choices(string.ascii_letters + string.digits, k=60))
        written = keys._checksum(body)
        assert keys._checksum_matches(body, written)
        for at in range(len(written)):  # any other digit anywhere is a mismatch
            other = rng.choice(keys._BASE62.replace(written[at], ""))
            assert not keys._checksum_matches(body, written[:at] + other + written[at + 1 :])


def test_checksum_typo_in_the_secret_says_bad_checksum() -> None:
    raw = generate_key().secret
    pos = 30
    typo = raw[:pos] + ("A" if raw[pos] != "A" else "B") + raw[pos + 1 :]
    with pytest.raises(AuthError, match="bad checksum") as info:
        parse_key(typo)
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"


def malformed_variants(raw: str) -> dict[str, str]:
    return {
        "prefix": "sk" + raw[2:],
        "empty": "",
        "truncated": raw[:-1],
        "too long": raw + "a",
        "separator": raw[:15] + "x" + raw[16:],
        "id letter outside base32": raw[:3] + "I" + raw[4:],
        "secret symbol": raw[:20] + "-" + raw[21:],
        "checksum": raw[:-1] + ("a" if raw[-1] != "a" else "b"),
    }


def test_malformed_variants_get_distinct_messages_without_the_key() -> None:
    raw = generate_key().secret
    variants = malformed_variants(raw)
    messages = {}
    for name, bad in variants.items():
        with pytest.raises(AuthError) as info:
            parse_key(bad)
        message = info.value.message
        messages[name] = message
        assert raw not in message
        assert raw[16:-6] not in message  # the secret itself
        if bad:
            assert bad not in message
    assert messages["prefix"] == messages["empty"]  # both "not an rk_ key"
    del messages["empty"]
    assert len(set(messages.values())) == len(messages), messages
    assert "rk_ prefix" in messages["prefix"]
    assert "checksum" in messages["checksum"]
    assert "malformed" in messages["separator"]


def test_hash_verify_round_trip_and_wrong_key_rejected() -> None:
    new, other = generate_key(), generate_key()
    stored = hash_secret(new.secret, CHEAP_HASHER)
    assert stored.startswith("$argon2id$")
    assert new.secret not in stored
    assert CHEAP_HASHER.verify(stored, new.secret)
    assert not CHEAP_HASHER.verify(stored, other.secret)


def test_default_parameters_hash_and_verify() -> None:
    hasher = KeyHasher()
    new = generate_key()
    stored = hash_secret(new.secret)
    assert "m=19456,t=2,p=1" in stored
    assert hasher.verify(stored, new.secret)
    assert not hasher.verify(stored, generate_key().secret)
    assert not hasher.needs_rehash(stored)
    assert CHEAP_HASHER.needs_rehash(stored)


def test_cache_hit_skips_the_hasher() -> None:
    hasher, cache = CountingHasher(), VerifiedKeyCache(b"s" * 32)
    new = generate_key()
    stored = hasher.hash(new.secret)
    for _ in range(10):
        assert authenticate(new.secret, stored, cache, hasher)
    assert hasher.verify_calls == 1


def test_wrong_secret_for_a_cached_key_id_is_rejected_without_the_hasher() -> None:
    hasher, cache = CountingHasher(), VerifiedKeyCache()
    new = generate_key()
    stored = hasher.hash(new.secret)
    assert authenticate(new.secret, stored, cache, hasher)
    # A forged key: the real id with another (checksum-valid) secret.
    forged_body = f"rk_{new.key_id}_" + generate_key().secret[16:-6]
    forged = forged_body + keys._checksum(forged_body)
    assert cache.lookup(parse_key(forged)) is CacheLookup.MISMATCH
    assert not authenticate(forged, stored, cache, hasher)
    assert hasher.verify_calls == 1


def test_failed_verify_is_not_remembered() -> None:
    hasher, cache = CountingHasher(), VerifiedKeyCache()
    new = generate_key()
    assert not authenticate(new.secret, "fake$something-else", cache, hasher)
    assert cache.lookup(parse_key(new.secret)) is CacheLookup.UNKNOWN
    assert len(cache) == 0


def test_forget_makes_the_next_lookup_miss() -> None:
    hasher, cache = CountingHasher(), VerifiedKeyCache()
    new = generate_key()
    stored = hasher.hash(new.secret)
    assert authenticate(new.secret, stored, cache, hasher)
    cache.forget(new.key_id)
    cache.forget("unknown-id")  # no error
    assert cache.lookup(parse_key(new.secret)) is CacheLookup.UNKNOWN
    assert authenticate(new.secret, stored, cache, hasher)
    assert hasher.verify_calls == 2


def test_cache_holds_digests_not_keys() -> None:
    cache = VerifiedKeyCache(b"k" * 32)
    new = generate_key()
    cache.remember(parse_key(new.secret))
    stored = cache._digests[new.key_id]
    assert stored == hmac.digest(b"k" * 32, new.secret.encode(), "sha256")
    assert new.secret.encode() not in stored


def test_cache_compares_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    cache = VerifiedKeyCache()
    key = parse_key(generate_key().secret)
    cache.remember(key)
    assert cache.lookup(key) is CacheLookup.VERIFIED
    assert len(calls) == 1


def test_cache_rejects_a_short_server_secret() -> None:
    with pytest.raises(ValueError):
        VerifiedKeyCache(b"short")


def test_mask_key_shows_id_and_last4_only() -> None:
    new = generate_key()
    masked = mask_key(new.key_id, new.last4)
    assert masked == f"rk_{new.key_id}_\u2026{new.last4}"
    assert new.secret[16:-4] not in masked


def test_cache_digest_is_hmac_sha256_of_the_key() -> None:
    secret = b"s" * 32
    cache = VerifiedKeyCache(secret)
    new = generate_key()
    expected = hmac.digest(secret, new.secret.encode(), "sha256")
    assert cache._digest(new.secret) == expected
    long_secret = b"L" * 100  # longer than SHA-256's block: hashed first, as HMAC does
    assert VerifiedKeyCache(long_secret)._digest(new.secret) == hmac.digest(
        long_secret, new.secret.encode(), "sha256"
    )
