//! Named dirty bitmaps of nodes, as QEMU's `block-dirty-bitmap-*`
//! commands keep them: each records, while enabled, every range written
//! to its node through the node's write chokepoint, and can be cleared,
//! merged, and used by a job (then it is busy). QEMU's checks and
//! messages.
//!
//! Persistent bitmaps live in the image as well (qcow2 stores them, see
//! the driver's `bitmaps` module): loaded when the node opens or becomes
//! active, stored when it closes, goes read-only or is handed over. A
//! bitmap loaded from a read-only image is read-only; one the image marks
//! as saved incompletely is inconsistent and can only be removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use schema::info::BlockDirtyInfo;

use crate::dirty_bitmap::DirtyBitmap;
use crate::error::BlockResult;
use crate::graph::{generic, BlockGraph};
use crate::node::Node;
use crate::write_hooks::{WriteKind, WriteObserver, WriteRequest};

/// QEMU's `BDRV_BITMAP_MAX_NAME_SIZE`.
const MAX_NAME_LEN: usize = 1023;

/// The most bitmaps one node holds.
pub const MAX_BITMAPS_PER_NODE: usize = 256;

/// One named bitmap.
pub struct NamedBitmap {
    name: String,
    /// The bits; replaced by a copy of another size when the node is
    /// resized (writes set bits under the read lock, so none is lost).
    bitmap: RwLock<Arc<DirtyBitmap>>,
    recording: AtomicBool,
    persistent: bool,
    /// Loaded from a read-only image: it cannot change.
    readonly: AtomicBool,
    /// Stored incompletely by the last writer: its bits mean nothing.
    inconsistent: bool,
    busy: AtomicBool,
    /// While a backup uses the bitmap: where new writes go meanwhile
    /// (QEMU's successor), so that the bitmap itself stays as it was when
    /// the backup began.
    successor: Mutex<Option<DirtyBitmap>>,
}

impl NamedBitmap {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bits as they are now.
    pub fn bitmap(&self) -> Arc<DirtyBitmap> {
        self.bits().clone()
    }

    fn bits(&self) -> std::sync::RwLockReadGuard<'_, Arc<DirtyBitmap>> {
        self.bitmap.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The node now has `size` bytes: the bitmap covers them, as QEMU's
    /// `bdrv_dirty_bitmap_truncate` (a grown part is clean, bits past a
    /// shrunk end are gone).
    fn resize(&self, size: u64) {
        let mut bits = self.bitmap.write().unwrap_or_else(|e| e.into_inner());
        if bits.size() == size {
            return;
        }
        *bits = Arc::new(resized(&bits, size));
        if let Some(successor) = self.successor().as_mut() {
            *successor = resized(successor, size);
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }

    fn successor(&self) -> std::sync::MutexGuard<'_, Option<DirtyBitmap>> {
        self.successor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backup takes the bitmap (QEMU's `bdrv_dirty_bitmap_create_successor`):
    /// it is busy, and new writes go to a successor until the backup ends.
    pub fn freeze(&self) -> BlockResult<()> {
        self.check_usable()?;
        let bits = self.bits();
        let mut successor = self.successor();
        *successor = Some(DirtyBitmap::new(bits.size(), bits.granularity()));
        self.busy.store(true, Ordering::Release);
        Ok(())
    }

    /// The backup succeeded (QEMU's `abdicate`): the bitmap now holds only
    /// what was written while it ran.
    pub fn abdicate(&self) {
        let bits = self.bits();
        let mut successor = self.successor();
        if let Some(newer) = successor.take() {
            bits.reset(0, bits.size());
            bits.merge_from(&newer);
        }
        self.busy.store(false, Ordering::Release);
    }

    /// The backup ended otherwise (QEMU's `reclaim`): what was written
    /// meanwhile is added back. With `remaining`, the bitmap first keeps
    /// only what the backup had not copied (`bitmap-mode=always`).
    pub fn reclaim(&self, remaining: Option<&DirtyBitmap>) {
        let bits = self.bits();
        let mut successor = self.successor();
        if let Some(remaining) = remaining {
            bits.retain_overlapping(remaining);
        }
        if let Some(newer) = successor.take() {
            bits.merge_from(&newer);
        }
        self.busy.store(false, Ordering::Release);
    }

    /// An export publishes the bitmap (QEMU's `bdrv_dirty_bitmap_set_busy`):
    /// nothing may change it meanwhile.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    fn check_busy(&self) -> BlockResult<()> {
        if self.is_busy() {
            return Err(generic(format!(
                "Bitmap '{}' is currently in use by another operation and cannot be used",
                self.name
            )));
        }
        Ok(())
    }

    fn check_writable(&self) -> BlockResult<()> {
        if self.readonly.load(Ordering::Acquire) {
            return Err(generic(format!(
                "Bitmap '{}' is readonly and cannot be modified",
                self.name
            )));
        }
        Ok(())
    }

    /// QEMU's `bdrv_dirty_bitmap_check` for what reads a bitmap or
    /// changes only whether it records (`BDRV_BITMAP_ALLOW_RO`).
    pub fn check_usable(&self) -> BlockResult<()> {
        self.check_busy()?;
        if self.inconsistent {
            return Err(generic(format!(
                "Bitmap '{}' is inconsistent and cannot be used",
                self.name
            )));
        }
        Ok(())
    }

    /// The check for what changes the bits (`BDRV_BITMAP_DEFAULT`).
    pub fn check_modifiable(&self) -> BlockResult<()> {
        self.check_usable()?;
        self.check_writable()
    }

    /// The check for removal: an inconsistent bitmap may go.
    pub fn check_removable(&self) -> BlockResult<()> {
        self.check_busy()?;
        self.check_writable()
    }

    fn info(&self) -> BlockDirtyInfo {
        let bits = self.bitmap();
        BlockDirtyInfo {
            name: Some(self.name.clone()),
            count: i64::try_from(bits.dirty_bytes()).unwrap_or(i64::MAX),
            granularity: u32::try_from(bits.granularity()).unwrap_or(u32::MAX),
            recording: self.recording.load(Ordering::Acquire),
            busy: self.is_busy(),
            persistent: self.persistent,
            inconsistent: self.inconsistent.then_some(true),
        }
    }
}

/// A copy of `bits` over `size` bytes.
fn resized(bits: &DirtyBitmap, size: u64) -> DirtyBitmap {
    DirtyBitmap::from_bytes(size, bits.granularity(), &bits.to_bytes())
}

impl WriteObserver for NamedBitmap {
    fn after_write(&self, _node: &Node, request: &WriteRequest, result: &BlockResult<()>) {
        if request.kind == WriteKind::Resize {
            if result.is_ok() {
                self.resize(request.offset);
            }
            return;
        }
        if !self.recording.load(Ordering::Acquire) {
            return;
        }
        let bits = self.bits();
        match &*self.successor() {
            Some(successor) => successor.set(request.offset, request.len),
            None => bits.set(request.offset, request.len),
        }
    }
}

/// The bitmaps of one node, newest first.
#[derive(Default)]
pub(crate) struct NodeBitmaps {
    list: Mutex<Vec<Arc<NamedBitmap>>>,
}

impl NodeBitmaps {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<NamedBitmap>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, name: &str) -> Option<Arc<NamedBitmap>> {
        self.list().iter().find(|b| b.name == name).cloned()
    }

    /// `dirty-bitmaps` of `query-named-block-nodes` (absent when none).
    pub(crate) fn info(&self) -> Option<Vec<BlockDirtyInfo>> {
        let list = self.list();
        (!list.is_empty()).then(|| list.iter().map(|b| b.info()).collect())
    }
}

/// What `block-dirty-bitmap-add` asks for.
pub struct NewBitmap<'a> {
    pub node: &'a str,
    pub name: &'a str,
    pub granularity: Option<u32>,
    pub persistent: bool,
    pub disabled: bool,
}

/// QEMU's `bdrv_get_default_bitmap_granularity`: the node's cluster size
/// within 4 KiB..64 KiB, else 64 KiB.
pub fn default_granularity(node: &Node) -> u64 {
    match node.driver_info().and_then(|info| info.cluster_size) {
        Some(cluster) if cluster > 0 => cluster.clamp(4096, 64 << 10),
        _ => 64 << 10,
    }
}

/// A bitmap as an image stores it, read when its node opens.
pub struct StoredBitmap {
    pub name: String,
    pub granularity: u64,
    /// It records writes (the image's `auto` flag).
    pub enabled: bool,
    /// The last writer did not store it completely (`in_use`): its bits
    /// are clean and mean nothing.
    pub inconsistent: bool,
    pub bits: DirtyBitmap,
}

/// A persistent bitmap to write into its node's image.
pub struct BitmapToStore<'a> {
    pub name: &'a str,
    pub enabled: bool,
    pub bits: &'a DirtyBitmap,
}

impl Node {
    /// Takes the bitmaps the image stores (`load_bitmaps` of its driver).
    pub(crate) fn adopt_stored_bitmaps(self: &Arc<Self>, stored: Vec<StoredBitmap>) {
        let readonly = self.is_read_only();
        for stored in stored {
            let bitmap = Arc::new(NamedBitmap {
                name: stored.name,
                bitmap: RwLock::new(Arc::new(stored.bits)),
                recording: AtomicBool::new(stored.enabled && !stored.inconsistent),
                persistent: true,
                readonly: AtomicBool::new(readonly),
                inconsistent: stored.inconsistent,
                busy: AtomicBool::new(false),
                successor: Mutex::default(),
            });
            self.attach_write_observer(bitmap.clone());
            self.bitmaps().list().insert(0, bitmap);
        }
    }

    /// Reads the bitmaps the image stores into the node (it opened or
    /// became active).
    pub(crate) async fn load_stored_bitmaps(self: &Arc<Self>) -> BlockResult<()> {
        let stored = self.driver().load_bitmaps().await?;
        self.adopt_stored_bitmaps(stored);
        Ok(())
    }

    /// Writes the node's persistent bitmaps into its image (QEMU's
    /// `bdrv_store_persistent_dirty_bitmaps`), before the image closes,
    /// goes read-only or is handed over. With `release`, they leave the
    /// node afterwards (the image is no longer this node's to track).
    pub(crate) async fn store_persistent_bitmaps(&self, release: bool) -> BlockResult<()> {
        let persistent: Vec<Arc<NamedBitmap>> = self
            .bitmaps()
            .list()
            .iter()
            .filter(|b| b.persistent)
            .cloned()
            .collect();
        if persistent.is_empty() {
            return Ok(());
        }
        let writable: Vec<(&NamedBitmap, Arc<DirtyBitmap>)> = persistent
            .iter()
            .filter(|b| !b.inconsistent && !b.readonly.load(Ordering::Acquire))
            .map(|b| (b.as_ref(), b.bitmap()))
            .collect();
        let to_store: Vec<BitmapToStore<'_>> = writable
            .iter()
            .map(|(b, bits)| BitmapToStore {
                name: &b.name,
                enabled: b.is_recording(),
                bits,
            })
            .collect();
        if !to_store.is_empty() {
            self.driver().store_bitmaps(&to_store).await?;
        }
        if release {
            for bitmap in persistent {
                self.forget_bitmap(&bitmap);
            }
        }
        Ok(())
    }

    /// The node went read-only (stored first) or read-write: its
    /// persistent bitmaps follow.
    pub(crate) fn set_bitmaps_read_only(&self, readonly: bool) {
        for bitmap in self.bitmaps().list().iter().filter(|b| b.persistent) {
            bitmap.readonly.store(readonly, Ordering::Release);
        }
    }

    fn forget_bitmap(&self, bitmap: &Arc<NamedBitmap>) {
        self.bitmaps().list().retain(|b| !Arc::ptr_eq(b, bitmap));
        let observer: Arc<dyn WriteObserver> = bitmap.clone();
        self.detach_write_observer(&observer);
    }
}

impl BlockGraph {
    /// `block-dirty-bitmap-add`.
    pub fn bitmap_add(&self, new: &NewBitmap<'_>) -> BlockResult<()> {
        let node = self.lookup(Some(new.node), Some(new.node))?;
        if new.name.is_empty() {
            return Err(generic("Bitmap name cannot be empty"));
        }
        let granularity = match new.granularity {
            None => default_granularity(&node),
            Some(g) if g >= 512 && g.is_power_of_two() => u64::from(g),
            Some(_) => return Err(generic("Granularity must be power of 2 and at least 512")),
        };
        let bitmaps = node.bitmaps();
        let mut list = bitmaps.list();
        if new.persistent {
            if !node.driver().stores_bitmaps() {
                return Err(generic(format!(
                    "Can't store persistent bitmaps to {}: Operation not supported",
                    node.name()
                )));
            }
            let persistent = list.iter().filter(|b| b.persistent).count();
            node.driver()
                .check_new_bitmap(new.name, granularity, persistent)
                .map_err(|e| {
                    generic(format!(
                        "Can't make bitmap '{}' persistent in '{}': {}",
                        new.name,
                        node.name(),
                        e.message
                    ))
                })?;
        }
        if list.iter().any(|b| b.name == new.name) {
            return Err(generic(format!("Bitmap already exists: {}", new.name)));
        }
        if new.name.len() > MAX_NAME_LEN {
            return Err(generic(format!("Bitmap name too long: {}", new.name)));
        }
        if list.len() >= MAX_BITMAPS_PER_NODE {
            return Err(generic(format!(
                "Too many bitmaps on node '{}' (at most {MAX_BITMAPS_PER_NODE})",
                node.name()
            )));
        }
        let bitmap = Arc::new(NamedBitmap {
            name: new.name.to_owned(),
            bitmap: RwLock::new(Arc::new(DirtyBitmap::new(node.size(), granularity))),
            recording: AtomicBool::new(!new.disabled),
            persistent: new.persistent,
            readonly: AtomicBool::new(false),
            inconsistent: false,
            busy: AtomicBool::new(false),
            successor: Mutex::default(),
        });
        node.attach_write_observer(bitmap.clone());
        list.insert(0, bitmap);
        Ok(())
    }

    /// Bitmap `name` of `node` or, failing that, of the first node below
    /// it (through filters and backing images) that has one: the node
    /// that has it, and the bitmap.
    pub fn bitmap_in_chain(
        &self,
        node: &Arc<Node>,
        name: &str,
    ) -> Option<(Arc<Node>, Arc<NamedBitmap>)> {
        crate::blockjob::stream::backing_chain(node)
            .into_iter()
            .find_map(|node| node.bitmaps().find(name).map(|bitmap| (node, bitmap)))
    }

    /// QEMU's `block_dirty_bitmap_lookup`: the node and its bitmap `name`.
    pub fn bitmap_lookup(
        &self,
        node: &str,
        name: &str,
    ) -> BlockResult<(Arc<Node>, Arc<NamedBitmap>)> {
        let node = self
            .node(node)
            .ok_or_else(|| generic(format!("Node '{node}' not found")))?;
        let bitmap = node
            .bitmaps()
            .find(name)
            .ok_or_else(|| generic(format!("Dirty bitmap '{name}' not found")))?;
        Ok((node, bitmap))
    }

    /// `block-dirty-bitmap-remove`: a persistent bitmap leaves the image
    /// too.
    pub async fn bitmap_remove(&self, node: &str, name: &str) -> BlockResult<()> {
        let (node, bitmap) = self.bitmap_lookup(node, name)?;
        bitmap.check_removable()?;
        if bitmap.persistent {
            node.driver().remove_stored_bitmap(name).await?;
        }
        node.forget_bitmap(&bitmap);
        Ok(())
    }

    /// `block-dirty-bitmap-clear`.
    pub fn bitmap_clear(&self, node: &str, name: &str) -> BlockResult<()> {
        let (_, bitmap) = self.bitmap_lookup(node, name)?;
        bitmap.check_modifiable()?;
        let bits = bitmap.bitmap();
        bits.reset(0, bits.size());
        Ok(())
    }

    /// `block-dirty-bitmap-enable` and `-disable`.
    pub fn bitmap_set_recording(&self, node: &str, name: &str, recording: bool) -> BlockResult<()> {
        let (_, bitmap) = self.bitmap_lookup(node, name)?;
        bitmap.check_usable()?;
        bitmap.recording.store(recording, Ordering::Release);
        Ok(())
    }

    /// `block-dirty-bitmap-merge`: every source (a bitmap of `node` by
    /// name, or of another node) is added into `target`, all or nothing.
    pub fn bitmap_merge(
        &self,
        node: &str,
        target: &str,
        sources: &[(Option<String>, String)],
    ) -> BlockResult<()> {
        let (_, target) = self.bitmap_lookup(node, target)?;
        target.check_modifiable()?;
        let target = target.bitmap();
        let mut found = Vec::with_capacity(sources.len());
        for (source_node, name) in sources {
            let (_, source) = self.bitmap_lookup(source_node.as_deref().unwrap_or(node), name)?;
            source.check_usable()?;
            let source = source.bitmap();
            if source.size() != target.size() {
                return Err(generic(format!(
                    "Bitmaps are of different sizes (destination size is {}, source size is {}) and can't be merged",
                    target.size(),
                    source.size()
                )));
            }
            found.push(source);
        }
        for source in found {
            target.merge_from(&source);
        }
        Ok(())
    }

    /// `x-debug-block-dirty-bitmap-sha256`.
    pub fn bitmap_sha256(&self, node: &str, name: &str) -> BlockResult<String> {
        let (_, bitmap) = self.bitmap_lookup(node, name)?;
        Ok(bitmap.bitmap().sha256_hex())
    }
}
