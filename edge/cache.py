"""The answer cache: repeated deterministic requests are answered without running any model.

Only deterministic requests are cached (greedy, or sampled with a fixed seed). The key is the
proxy's pack version, the prompt, every sampling parameter, the route mode and the threshold
(in auto mode it decides between the proxy's and the full model's answer), so a new pack, a
different parameter or a new threshold never hits an old answer. Entries are bounded (least
recently used go first) and expire after a TTL; degraded answers (route EDGE_FALLBACK) are never
stored. The cache is rebuilt, empty, when operators change its size or TTL.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, MutableMapping

from cachetools import LRUCache, TTLCache

from shared.rpc import inference_pb2
from shared.sampling import SamplingParams
from shared.settings.edge import CacheSettings

CacheKey = tuple[Hashable, ...]


def cache_key(
    pack_version: str, prompt: str, params: SamplingParams, mode: str, threshold: float
) -> CacheKey:
    """The identity of a deterministic request's answer (the threshold decides its route)."""
    return (
        threshold,
        pack_version,
        prompt,
        params.max_new_tokens,
        params.temperature,
        params.top_p,
        params.seed,
        tuple(params.stop),
        mode,
    )


class AnswerCache:
    """LRU with TTL over final responses; thread-safe."""

    def __init__(self, settings: CacheSettings) -> None:
        self._lock = threading.Lock()
        self.settings = settings
        self._store = self._make(settings)

    @staticmethod
    def _make(s: CacheSettings) -> MutableMapping[CacheKey, bytes]:
        store: MutableMapping[CacheKey, bytes]
        if s.ttl_s > 0:
            store = TTLCache(maxsize=s.max_entries, ttl=s.ttl_s)
        else:
            store = LRUCache(maxsize=s.max_entries)
        return store

    def reconfigure(self, settings: CacheSettings) -> None:
        """Apply new settings; a new size or TTL starts an empty cache."""
        with self._lock:
            if (settings.max_entries, settings.ttl_s) != (
                self.settings.max_entries,
                self.settings.ttl_s,
            ):
                self._store = self._make(settings)
            elif not settings.enabled:
                self._store.clear()
            self.settings = settings

    def get(self, key: CacheKey) -> inference_pb2.GenerateResponse | None:
        if not self.settings.enabled:
            return None
        with self._lock:
            data = self._store.get(key)
        # Stored serialized: a caller can change its copy without touching the cache.
        return None if data is None else inference_pb2.GenerateResponse.FromString(data)

    def put(self, key: CacheKey, response: inference_pb2.GenerateResponse) -> None:
        if not self.settings.enabled or response.route == inference_pb2.ROUTE_EDGE_FALLBACK:
            return
        data = response.SerializeToString()
        with self._lock:
            self._store[key] = data

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)
