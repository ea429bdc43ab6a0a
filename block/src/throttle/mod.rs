//! The `throttle` filter (QEMU's `block/throttle.c`) and the
//! `throttle-group` objects it draws on.
//!
//! A throttle node joins the group its `throttle-group` option names (an
//! object the daemon created) and lets each read, write, write-zeroes and
//! discard through to its `file` child only when the group's limits allow
//! it: reads count as reads, the others as writes, each with its length in
//! bytes, as in QEMU. Flushes and block status pass unthrottled. Reads are
//! never served around the filter (no zero-copy read source). While the
//! node is drained its requests pass without waiting, as in QEMU. The node
//! leaves the group when it closes; a group that nodes use cannot be
//! deleted.
//!
//! [`bucket`] holds the arithmetic of the limits, [`group`] the shared
//! group and its queues.

mod bucket;
mod group;

pub use bucket::{Direction, ThrottleConfig};
pub use group::{Admission, Member, ThrottleGroup};

use std::any::Any;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use schema::block::{BlockdevDriver, BlockdevOptionsThrottle};
use serde_json::{Map, Value as Json};

use crate::driver::{BlockDriver, ChildRole, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::iobuf::IoBuf;
use crate::node::{NodeChild, ReadSource};
use crate::open::{ObjectLookup, OpenContext};
use crate::permissions::ChildRoleFlags;

/// A `throttle` node over its `file` child.
pub struct ThrottleDriver {
    file: Arc<NodeChild>,
    /// The node's place in its group; `blockdev-reopen` may move it to
    /// another group (requests already admitted keep the old place).
    member: ArcSwap<Member>,
}

impl ThrottleDriver {
    /// Opens the child, then joins the group, in QEMU's order (a missing
    /// child is reported before a missing group).
    pub async fn open(
        cx: &mut OpenContext<'_>,
        options: &BlockdevOptionsThrottle,
    ) -> BlockResult<Self> {
        let role = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let file = cx.child(&options.file, ChildRole::File, role).await?;
        let member = join(cx.object(&options.throttle_group), &options.throttle_group)?;
        Ok(ThrottleDriver {
            file,
            member: ArcSwap::from_pointee(member),
        })
    }

    async fn admit(&self, direction: Direction, bytes: u64) {
        let member = self.member.load_full();
        member.admit(direction, bytes).await;
    }
}

/// A place in the group `object` (named `name`), as QEMU words its absence.
fn join(object: Option<Arc<dyn Any + Send + Sync>>, name: &str) -> BlockResult<Member> {
    object
        .and_then(|object| object.downcast::<ThrottleGroup>().ok())
        .and_then(|group| group.join())
        .ok_or_else(|| {
            BlockError::new(
                ErrorKind::InvalidArgument,
                format!("Throttle group '{name}' does not exist"),
            )
        })
}

#[async_trait]
impl BlockDriver for ThrottleDriver {
    fn format_name(&self) -> &'static str {
        "throttle"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.file)
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.admit(Direction::Read, buf.len() as u64).await;
        self.file.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.admit(Direction::Write, buf.len() as u64).await;
        self.file.write(offset, buf, flags).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.admit(Direction::Write, len).await;
        self.file.write_zeroes(offset, len, flags).await
    }

    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.admit(Direction::Write, len).await;
        self.file.discard(offset, len).await
    }

    /// A reopen may name another group (QEMU's `throttle_reopen_prepare`):
    /// the node joins it now and moves to it if the reopen succeeds.
    fn prepare_reopen(
        &self,
        options: &BlockdevDriver,
        _settings: &crate::node::NodeSettings,
        objects: Option<&dyn ObjectLookup>,
    ) -> BlockResult<Option<Arc<dyn Any + Send + Sync>>> {
        let BlockdevDriver::Throttle(options) = options else {
            return Ok(None);
        };
        let name = &options.throttle_group;
        let member = join(objects.and_then(|o| o.object(name)), name)?;
        Ok(Some(Arc::new(Mutex::new(Some(member)))))
    }

    fn commit_reopen(&self, prepared: Arc<dyn Any + Send + Sync>) {
        let Ok(prepared) = prepared.downcast::<Mutex<Option<Member>>>() else {
            return;
        };
        let member = prepared.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(member) = member {
            member.take_suspensions_of(&self.member.load());
            self.member.store(Arc::new(member));
        }
    }

    /// While the node is drained its requests do not wait for the limits
    /// (QEMU's `throttle_co_drain_begin`): a drain never waits on them.
    fn drain_begin(&self) {
        self.member.load().suspend_limits();
    }

    fn drain_end(&self) {
        self.member.load().resume_limits();
    }

    /// Reads must pass the limits: never served around them.
    fn read_source(&self, _offset: u64, _len: u64) -> Option<ReadSource> {
        None
    }

    /// The group, as QEMU shows it in `json:` file names.
    fn strong_options(&self) -> Map<String, Json> {
        let mut options = Map::new();
        options.insert(
            "throttle-group".to_string(),
            Json::from(self.member.load().group().name()),
        );
        options
    }
}
