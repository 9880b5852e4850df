"""Store semantics, the same cases for memory, fakeredis and a real redis-server."""

from __future__ import annotations

import uuid

import pytest

from pullstats_middleware.store import (
    Batch,
    DigestFetch,
    IndexChildren,
    ManifestDelta,
    Push,
    RedisStore,
    Resolution,
    Store,
    TagDelta,
    iso_date,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
T0 = 1_725_790_500.0  # 2024-09-08T10:15:00Z


def apply(
    store: Store,
    *items: object,
    batch_id: str = "",
    window: float = 30.0,
    skew: float = 1.0,
    origin: str = "process-1",
) -> list[str]:
    batch = Batch(batch_id or uuid.uuid4().hex, origin)
    for item in items:
        if isinstance(item, TagDelta):
            batch.tags.append(item)
        elif isinstance(item, ManifestDelta):
            batch.manifests.append(item)
        elif isinstance(item, IndexChildren):
            batch.indexes.append(item)
        elif isinstance(item, Push):
            batch.pushes.append(item)
        else:
            batch.attribution_events.append(item)  # type: ignore[arg-type]
    return store.apply(batch, window=window, skew=skew)


def test_iso_date_is_the_seed_format() -> None:
    assert iso_date(T0) == "2024-09-08T10:15:00Z"


def test_counts_dates_and_current_digest(store: Store) -> None:
    apply(store, TagDelta("r", "v1", 3, iso_date(T0), D1), ManifestDelta("r", D1, 3, iso_date(T0)))
    apply(
        store,
        TagDelta("r", "v1", 2, iso_date(T0 + 60), D2),
        ManifestDelta("r", D2, 2, iso_date(T0 + 60)),
    )
    tag = store.read_tag("r", "v1")[:3]
    assert tag == (5, "2024-09-08T10:16:00Z", D2)
    assert store.read_manifest("r", D1) == (3, "2024-09-08T10:15:00Z")
    assert store.read_manifest("r", "sha256:" + "9" * 64) == (0, None)
    assert store.read_tag("r", "never")[:3] == (0, None, None)


def test_last_pull_date_never_moves_backwards(store: Store) -> None:
    apply(
        store,
        TagDelta("r", "v1", 1, iso_date(T0 + 60), D2),
        ManifestDelta("r", D1, 1, iso_date(T0 + 60)),
    )
    # a slower writer lands later with an older batch
    apply(store, TagDelta("r", "v1", 1, iso_date(T0), D1), ManifestDelta("r", D1, 1, iso_date(T0)))
    assert store.read_tag("r", "v1")[:3] == (2, iso_date(T0 + 60), D2)
    assert store.read_manifest("r", D1) == (2, iso_date(T0 + 60))


def test_a_resent_batch_is_applied_once(store: Store) -> None:
    for _ in range(3):
        apply(store, TagDelta("r", "v1", 7, iso_date(T0), D1), batch_id="same-id")
    assert store.read_tag("r", "v1").pull_count == 7


def test_head_then_get_pairs_in_either_landing_order(store: Store) -> None:
    head = Resolution("client-a", "r", "v1", D1, T0)
    get = DigestFetch("client-a", "r", D1, T0 + 1)
    apply(store, head, get)  # one batch, in order
    apply(store, get, batch_id="get-first")  # a second GET: no second tag pull
    assert store.read_tag("r", "v1").pull_count == 1
    # GET lands before its HEAD (two processes, the HEAD's flushes later)
    apply(store, DigestFetch("client-b", "r", D1, T0 + 5), batch_id="b-get")
    apply(store, Resolution("client-b", "r", "v2", D1, T0 + 4), batch_id="b-head")
    assert store.read_tag("r", "v2")[:3] == (1, iso_date(T0 + 5), D1)


def test_pairing_needs_the_same_client_and_the_window(store: Store) -> None:
    apply(store, Resolution("a", "r", "v1", D1, T0), DigestFetch("b", "r", D1, T0 + 1))
    apply(
        store,
        Resolution("c", "r", "v1", D1, T0),
        DigestFetch("c", "r", D1, T0 + 31),
        batch_id="late",
    )
    apply(
        store,
        Resolution("d", "r", "v1", D1, T0),
        DigestFetch("d", "r", D2, T0 + 1),
        batch_id="other",
    )
    assert store.read_tag("r", "v1").pull_count == 0


def test_keys_holding_foreign_data_are_skipped_not_fatal(redis_store: RedisStore) -> None:
    store, client = redis_store, redis_store.client
    client.set("pull_metrics/tag/r/bad", "a string")
    client.hset("pull_metrics/manifest/r/" + D2, "pull_count", "many")
    skipped = apply(
        store,
        TagDelta("r", "bad", 1, iso_date(T0), D1),
        TagDelta("r", "good", 1, iso_date(T0), D1),
        ManifestDelta("r", D2, 1, iso_date(T0)),
    )
    assert sorted(skipped) == ["pull_metrics/manifest/r/" + D2, "pull_metrics/tag/r/bad"]
    assert store.read_tag("r", "good").pull_count == 1
    assert client.get("pull_metrics/tag/r/bad") == b"a string"


def test_redis_key_schema_is_the_seeds(redis_store: RedisStore) -> None:
    store = redis_store
    apply(
        store,
        TagDelta("org/repo", "v1.0", 2, iso_date(T0), D1),
        ManifestDelta("org/repo", D1, 2, iso_date(T0)),
    )
    client = store.client
    assert client.hgetall("pull_metrics/tag/org/repo/v1.0") == {
        b"pull_count": b"2",
        b"last_pull_date": b"2024-09-08T10:15:00Z",
        b"current_manifest_digest": D1.encode(),
    }
    assert client.hgetall(f"pull_metrics/manifest/org/repo/{D1}") == {
        b"pull_count": b"2",
        b"last_pull_date": b"2024-09-08T10:15:00Z",
    }
    others = [k.decode() for k in client.keys("*") if b"/tag/" not in k and b"/manifest/" not in k]
    assert all(k.startswith("pull_metrics/batch/") for k in others)


def test_one_process_knows_the_order_a_get_then_a_head_is_no_pair(store: Store) -> None:
    """A pull by digest, then an "is my tag up to date?" HEAD: not a tag pull."""
    apply(store, DigestFetch("c", "r", D1, T0), Resolution("c", "r", "v1", D1, T0 + 0.5))
    assert store.read_tag("r", "v1").pull_count == 0


@pytest.mark.parametrize("gap, pairs", [(0.5, True), (1.5, False)])
def test_two_processes_pair_a_get_seemingly_before_its_head_within_the_skew(
    store: Store, gap: float, pairs: bool
) -> None:
    apply(store, DigestFetch("c", "r", D1, T0), origin="process-b")
    apply(store, Resolution("c", "r", "v1", D1, T0 + gap), origin="process-a")
    assert store.read_tag("r", "v1").pull_count == (1 if pairs else 0)


def test_a_head_resolving_to_an_index_pairs_with_a_get_of_any_child(store: Store) -> None:
    """`docker pull --platform linux/arm64` with the index cached: HEAD v1 answers the
    index digest, then only the arm64 image is fetched. Counted once, as a tag pull."""
    index, amd64, arm64 = D1, D2, "sha256:" + "3" * 64
    apply(store, IndexChildren("r", index, (amd64, arm64)))
    apply(store, Resolution("c", "r", "v1", index, T0), DigestFetch("c", "r", arm64, T0 + 1))
    assert store.read_tag("r", "v1")[:3] == (1, iso_date(T0 + 1), index)  # the index digest
    apply(store, DigestFetch("c", "r", amd64, T0 + 2), DigestFetch("c", "r", index, T0 + 3))
    assert store.read_tag("r", "v1").pull_count == 1  # the group was consumed at once
    # the usual multi-arch pull: the index GET pairs, its child is a plain digest pull
    apply(
        store,
        Resolution("d", "r", "v1", index, T0 + 10),
        DigestFetch("d", "r", index, T0 + 11),
        DigestFetch("d", "r", amd64, T0 + 12),
    )
    assert store.read_tag("r", "v1").pull_count == 2


def test_a_child_get_recorded_just_before_the_index_head_pairs_across_processes(
    store: Store,
) -> None:
    index, arm64 = D1, "sha256:" + "3" * 64
    apply(store, IndexChildren("r", index, (D2, arm64)))
    apply(store, DigestFetch("c", "r", arm64, T0), origin="process-b")
    apply(store, Resolution("c", "r", "v1", index, T0 + 0.5), origin="process-a")
    assert store.read_tag("r", "v1").pull_count == 1


def test_pushes_name_the_tag_and_never_move_dates_backwards(store: Store) -> None:
    d3 = "sha256:" + "3" * 64
    apply(store, Push("r", "v1", iso_date(T0), D1))
    assert store.read_tag("r", "v1") == (0, None, D1, iso_date(T0))  # new, never pulled
    apply(store, TagDelta("r", "v1", 1, iso_date(T0 + 60), D1))
    apply(store, Push("r", "v1", iso_date(T0 + 120), D2))  # the tag moves
    assert store.read_tag("r", "v1") == (1, iso_date(T0 + 60), D2, iso_date(T0 + 120))
    apply(store, Push("r", "v1", iso_date(T0 + 30), d3))  # an older push, landing late
    assert store.read_tag("r", "v1") == (1, iso_date(T0 + 60), D2, iso_date(T0 + 120))
