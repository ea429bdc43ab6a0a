//! A cache of cluster-sized metadata tables (L2 tables, refcount blocks),
//! keyed by their host offset, with least-recently-used eviction.
//!
//! A table is loaded once even when many requests miss it together. It is
//! never evicted while dirty or while anyone holds it (a request between
//! lookup and update, a writeback with its write in flight): evicting it
//! then could lose an update or reload a stale copy. When every table is
//! pinned or dirty the cache grows past its capacity and says so through
//! [`TableCache::over_capacity`]; a writeback cleans it and the next
//! eviction brings it back within bounds.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use crate::error::BlockResult;

/// One cached table.
pub struct Table {
    offset: u64,
    data: Mutex<TableData>,
}

/// A table's bytes (as on disk) and whether they differ from the disk.
pub struct TableData {
    pub bytes: Vec<u8>,
    pub dirty: bool,
}

impl Table {
    fn new(offset: u64, bytes: Vec<u8>, dirty: bool) -> Self {
        Table {
            offset,
            data: Mutex::new(TableData { bytes, dirty }),
        }
    }

    /// The table's host offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Locks the table's bytes (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, TableData> {
        // A panic while holding the lock cannot leave the bytes half
        // updated in a way that matters more than the panic itself.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type Cell = Arc<OnceCell<Arc<Table>>>;

struct Slot {
    cell: Cell,
    last_use: u64,
}

#[derive(Default)]
struct CacheState {
    slots: HashMap<u64, Slot>,
    /// `last_use` -> offset, oldest first.
    lru: BTreeMap<u64, u64>,
    tick: u64,
}

impl CacheState {
    fn touch(&mut self, offset: u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(slot) = self.slots.get_mut(&offset) {
            self.lru.remove(&slot.last_use);
            slot.last_use = tick;
            self.lru.insert(tick, offset);
        }
    }

    fn insert(&mut self, offset: u64, cell: Cell) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(old) = self.slots.insert(
            offset,
            Slot {
                cell,
                last_use: tick,
            },
        ) {
            self.lru.remove(&old.last_use);
        }
        self.lru.insert(tick, offset);
    }

    fn remove(&mut self, offset: u64) {
        if let Some(old) = self.slots.remove(&offset) {
            self.lru.remove(&old.last_use);
        }
    }
}

/// A bounded cache of tables.
pub struct TableCache {
    /// A reopen may change it (`l2-cache-size`, `refcount-cache-size`).
    capacity: AtomicUsize,
    state: Mutex<CacheState>,
}

impl TableCache {
    /// A cache of at most `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> Self {
        TableCache {
            capacity: AtomicUsize::new(capacity.max(2)),
            state: Mutex::new(CacheState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table at `offset`, loaded by `load` if it is not cached.
    pub async fn get_or_load<F, Fut>(&self, offset: u64, load: F) -> BlockResult<Arc<Table>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = BlockResult<Vec<u8>>>,
    {
        let cell = {
            let mut state = self.state();
            let cell = match state.slots.get(&offset) {
                Some(slot) => slot.cell.clone(),
                None => {
                    let cell: Cell = Arc::new(OnceCell::new());
                    state.insert(offset, cell.clone());
                    cell
                }
            };
            state.touch(offset);
            cell
        };
        if let Some(table) = cell.get() {
            return Ok(table.clone());
        }
        let loaded = cell
            .get_or_try_init(|| async move {
                let bytes = load().await?;
                Ok(Arc::new(Table::new(offset, bytes, false)))
            })
            .await
            .cloned();
        let mut state = self.state();
        match loaded {
            Ok(table) => {
                self.evict(&mut state);
                Ok(table)
            }
            Err(e) => {
                let ours = state
                    .slots
                    .get(&offset)
                    .is_some_and(|s| Arc::ptr_eq(&s.cell, &cell) && s.cell.get().is_none());
                if ours && Arc::strong_count(&cell) == 2 {
                    state.remove(offset);
                }
                Err(e)
            }
        }
    }

    /// The table at `offset` if it is cached and loaded.
    #[cfg(test)]
    pub fn get(&self, offset: u64) -> Option<Arc<Table>> {
        let mut state = self.state();
        let table = state.slots.get(&offset)?.cell.get()?.clone();
        state.touch(offset);
        Some(table)
    }

    /// Caches a table that was just created at `offset` (replacing any
    /// stale copy of whatever was there before).
    pub fn insert_new(&self, offset: u64, bytes: Vec<u8>, dirty: bool) -> Arc<Table> {
        let table = Arc::new(Table::new(offset, bytes, dirty));
        let cell = Arc::new(OnceCell::new_with(Some(table.clone())));
        let mut state = self.state();
        state.insert(offset, cell);
        self.evict(&mut state);
        table
    }

    /// Every dirty table.
    pub fn dirty_tables(&self) -> Vec<Arc<Table>> {
        let state = self.state();
        state
            .slots
            .values()
            .filter_map(|slot| slot.cell.get())
            .filter(|table| table.lock().dirty)
            .cloned()
            .collect()
    }

    /// Whether more tables are cached than the capacity allows (all the
    /// others were pinned or dirty).
    pub fn over_capacity(&self) -> bool {
        self.state().slots.len() > self.capacity()
    }

    /// Evicts clean, unused tables, oldest first, down to the capacity.
    pub fn shrink(&self) {
        let mut state = self.state();
        self.evict(&mut state);
    }

    fn evict(&self, state: &mut CacheState) {
        if state.slots.len() <= self.capacity() {
            return;
        }
        let mut excess = state.slots.len() - self.capacity();
        let mut victims = Vec::new();
        for &offset in state.lru.values() {
            if excess == 0 {
                break;
            }
            let Some(slot) = state.slots.get(&offset) else {
                continue;
            };
            // Only the cache holds the cell and the table: nobody is
            // loading, using or writing it back.
            let idle = Arc::strong_count(&slot.cell) == 1
                && slot
                    .cell
                    .get()
                    .is_some_and(|t| Arc::strong_count(t) == 1 && !t.lock().dirty);
            if idle {
                victims.push(offset);
                excess -= 1;
            }
        }
        for offset in victims {
            state.remove(offset);
        }
    }

    /// Forgets every table (another process may have changed them; the
    /// caller wrote back what was dirty and nothing uses the cache).
    pub fn clear(&self) {
        *self.state() = CacheState::default();
    }

    /// The most tables the cache keeps.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Keeps at most `capacity` tables (at least 2) from now on; a cache
    /// over it shrinks at the next writeback.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(2), Ordering::Relaxed);
    }

    /// Number of cached tables.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn bytes(v: u8) -> Vec<u8> {
        vec![v; 16]
    }

    #[tokio::test]
    async fn loads_once_and_evicts_least_recently_used_clean_tables() {
        let cache = TableCache::new(2);
        let loads = AtomicUsize::new(0);
        let load = |v: u8| {
            loads.fetch_add(1, Ordering::Relaxed);
            async move { Ok(bytes(v)) }
        };
        let a = cache.get_or_load(0, || load(1)).await.unwrap();
        let again = cache.get_or_load(0, || load(9)).await.unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(loads.load(Ordering::Relaxed), 1);
        drop((a, again));
        cache.get_or_load(512, || load(2)).await.unwrap();
        cache.get_or_load(1024, || load(3)).await.unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.get(0).is_none(), "oldest evicted");
    }

    #[tokio::test]
    async fn pinned_and_dirty_tables_stay() {
        let cache = TableCache::new(2);
        let pinned = cache
            .get_or_load(0, || async { Ok(bytes(1)) })
            .await
            .unwrap();
        let dirty = cache.insert_new(512, bytes(2), true);
        drop(dirty);
        cache
            .get_or_load(1024, || async { Ok(bytes(3)) })
            .await
            .unwrap();
        // 1024 itself is the only evictable one, but it is the newest: the
        // cache stays over capacity rather than drop a pinned or dirty one.
        assert!(cache.get(0).is_some() && cache.get(512).is_some());
        assert_eq!(cache.dirty_tables().len(), 1);
        drop(pinned);
        cache.get(512).unwrap().lock().dirty = false;
        cache.shrink();
        assert!(!cache.over_capacity());
    }

    #[tokio::test]
    async fn failed_load_leaves_no_slot() {
        let cache = TableCache::new(4);
        let err = cache
            .get_or_load(0, || async {
                Err(crate::error::BlockError::new(
                    crate::error::ErrorKind::Io,
                    "boom",
                ))
            })
            .await;
        assert!(err.is_err());
        assert_eq!(cache.len(), 0);
        let ok = cache
            .get_or_load(0, || async { Ok(bytes(5)) })
            .await
            .unwrap();
        assert_eq!(ok.lock().bytes[0], 5);
    }
}
