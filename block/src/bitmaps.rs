//! Named dirty bitmaps of nodes, as QEMU's `block-dirty-bitmap-*`
//! commands keep them (in memory): each records, while enabled, every
//! range written to its node through the node's write chokepoint, and can
//! be cleared, merged, and used by a job (then it is busy). QEMU's checks
//! and messages. `persistent` is accepted where QEMU accepts it (qcow2)
//! and shown, but not yet written into the image.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    bitmap: DirtyBitmap,
    recording: AtomicBool,
    persistent: bool,
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

    pub fn bitmap(&self) -> &DirtyBitmap {
        &self.bitmap
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
        self.check_not_busy()?;
        let mut successor = self.successor();
        *successor = Some(DirtyBitmap::new(
            self.bitmap.size(),
            self.bitmap.granularity(),
        ));
        self.busy.store(true, Ordering::Release);
        Ok(())
    }

    /// The backup succeeded (QEMU's `abdicate`): the bitmap now holds only
    /// what was written while it ran.
    pub fn abdicate(&self) {
        let mut successor = self.successor();
        if let Some(newer) = successor.take() {
            self.bitmap.reset(0, self.bitmap.size());
            self.bitmap.merge_from(&newer);
        }
        self.busy.store(false, Ordering::Release);
    }

    /// The backup ended otherwise (QEMU's `reclaim`): what was written
    /// meanwhile is added back. With `remaining`, the bitmap first keeps
    /// only what the backup had not copied (`bitmap-mode=always`).
    pub fn reclaim(&self, remaining: Option<&DirtyBitmap>) {
        let mut successor = self.successor();
        if let Some(remaining) = remaining {
            self.bitmap.retain_overlapping(remaining);
        }
        if let Some(newer) = successor.take() {
            self.bitmap.merge_from(&newer);
        }
        self.busy.store(false, Ordering::Release);
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// QEMU's `bdrv_dirty_bitmap_check` for what may change a bitmap.
    pub fn check_not_busy(&self) -> BlockResult<()> {
        if self.is_busy() {
            return Err(generic(format!(
                "Bitmap '{}' is currently in use by another operation and cannot be used",
                self.name
            )));
        }
        Ok(())
    }

    fn info(&self) -> BlockDirtyInfo {
        BlockDirtyInfo {
            name: Some(self.name.clone()),
            count: i64::try_from(self.bitmap.dirty_bytes()).unwrap_or(i64::MAX),
            granularity: u32::try_from(self.bitmap.granularity()).unwrap_or(u32::MAX),
            recording: self.recording.load(Ordering::Acquire),
            busy: self.is_busy(),
            persistent: self.persistent,
            inconsistent: None,
        }
    }
}

impl WriteObserver for NamedBitmap {
    fn after_write(&self, _node: &Node, request: &WriteRequest, _result: &BlockResult<()>) {
        if request.kind == WriteKind::Resize || !self.recording.load(Ordering::Acquire) {
            return;
        }
        match &*self.successor() {
            Some(successor) => successor.set(request.offset, request.len),
            None => self.bitmap.set(request.offset, request.len),
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
        if new.persistent && node.driver().format_name() != "qcow2" {
            return Err(generic(format!(
                "Can't store persistent bitmaps to {}: Operation not supported",
                node.name()
            )));
        }
        let bitmaps = node.bitmaps();
        let mut list = bitmaps.list();
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
            bitmap: DirtyBitmap::new(node.size(), granularity),
            recording: AtomicBool::new(!new.disabled),
            persistent: new.persistent,
            busy: AtomicBool::new(false),
            successor: Mutex::default(),
        });
        node.attach_write_observer(bitmap.clone());
        list.insert(0, bitmap);
        Ok(())
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

    /// `block-dirty-bitmap-remove`.
    pub fn bitmap_remove(&self, node: &str, name: &str) -> BlockResult<()> {
        let (node, bitmap) = self.bitmap_lookup(node, name)?;
        bitmap.check_not_busy()?;
        node.bitmaps().list().retain(|b| !Arc::ptr_eq(b, &bitmap));
        let observer: Arc<dyn WriteObserver> = bitmap;
        node.detach_write_observer(&observer);
        Ok(())
    }

    /// `block-dirty-bitmap-clear`.
    pub fn bitmap_clear(&self, node: &str, name: &str) -> BlockResult<()> {
        let (_, bitmap) = self.bitmap_lookup(node, name)?;
        bitmap.check_not_busy()?;
        let size = bitmap.bitmap.size();
        bitmap.bitmap.reset(0, size);
        Ok(())
    }

    /// `block-dirty-bitmap-enable` and `-disable`.
    pub fn bitmap_set_recording(&self, node: &str, name: &str, recording: bool) -> BlockResult<()> {
        let (_, bitmap) = self.bitmap_lookup(node, name)?;
        bitmap.check_not_busy()?;
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
        target.check_not_busy()?;
        let mut found = Vec::with_capacity(sources.len());
        for (source_node, name) in sources {
            let (_, source) = self.bitmap_lookup(source_node.as_deref().unwrap_or(node), name)?;
            source.check_not_busy()?;
            if source.bitmap.size() != target.bitmap.size() {
                return Err(generic(format!(
                    "Bitmaps are of different sizes (destination size is {}, source size is {}) and can't be merged",
                    target.bitmap.size(),
                    source.bitmap.size()
                )));
            }
            found.push(source);
        }
        for source in found {
            target.bitmap.merge_from(&source.bitmap);
        }
        Ok(())
    }

    /// `x-debug-block-dirty-bitmap-sha256`.
    pub fn bitmap_sha256(&self, node: &str, name: &str) -> BlockResult<String> {
        let (_, bitmap) = self.bitmap_lookup(node, name)?;
        Ok(bitmap.bitmap.sha256_hex())
    }
}
