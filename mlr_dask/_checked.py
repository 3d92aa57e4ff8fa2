"""The read-side zarr store wrapper of :mod:`mlr_dask.io` (a separate module so that importing
mlr_dask does not import zarr)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from zarr.storage import WrapperStore

from mlr_dask.io import _array_flags, _chunk_key_parts, _damaged

__all__ = ["CheckedStore"]


class CheckedStore(WrapperStore):
    """A read-side zarr store wrapper: a chunk key that is missing although its array records
    that every chunk was written, or a chunk whose crc32c does not match, raises DataError
    naming ``label`` (the store location), the array and the chunk. Everything else is passed
    to the wrapped store. Picklable (Dask tasks read through it)."""

    def __init__(self, store: Any, label: str = "") -> None:
        super().__init__(store)
        self._label = label or str(store)
        self._flags: dict[str, tuple[bool, bool]] = {}

    def _with_store(self, store: Any) -> CheckedStore:
        out = type(self)(store, self._label)
        out._flags = dict(self._flags)
        return out

    def __str__(self) -> str:
        return self._label

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckedStore) and self._store == other._store

    def __hash__(self) -> int:
        return hash(self._label)

    def note_array(self, path: str, meta: dict[str, Any]) -> None:
        """Remember the flags of the array at ``path`` (saves a metadata read per task)."""
        self._flags[path] = _array_flags(meta)

    async def _flags_of(self, path: str) -> tuple[bool, bool]:
        if path not in self._flags:
            from zarr.core.buffer import default_buffer_prototype

            raw = await self._store.get(f"{path}/zarr.json" if path else "zarr.json",
                                        default_buffer_prototype())
            try:
                meta = json.loads(raw.to_bytes()) if raw is not None else {}
            except ValueError:
                meta = {}
            self._flags[path] = _array_flags(meta if isinstance(meta, dict) else {})
        return self._flags[path]

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await self._store.get(key, prototype, byte_range)
        parts = _chunk_key_parts(key)
        if parts is None:
            return buf
        array, idx = parts
        strict, crc = await self._flags_of(array)
        if buf is None:
            if strict:
                raise _damaged(self._label, array, idx, f"missing (no {key!r} in the store)")
            return buf
        if crc and byte_range is None:
            import google_crc32c

            data = buf.as_numpy_array()
            if data.size < 4:
                raise _damaged(self._label, array, idx, "truncated (shorter than its checksum)")
            computed = np.uint32(google_crc32c.value(np.ascontiguousarray(data[:-4]))).tobytes()
            if computed != bytes(data[-4:]):
                raise _damaged(self._label, array, idx,
                               "checksum mismatch (the chunk is truncated or overwritten)")
        return buf

    async def _get_many(self, requests: Any) -> Any:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


