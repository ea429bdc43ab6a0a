//! The `blkdebug` filter, QEMU's fault injector: requests to its `image`
//! child fail with a chosen errno when rules say so, and its limit options
//! make the node layer pad and split requests as a device with those
//! limits would need.
//!
//! Rules ([`rules`]) are armed by events. Parents raise events on their
//! child as in QEMU (through [`BlockDriver::debug_event`]): `raw` raises
//! `read_aio` and `write_aio` for each request, `qcow2` its data events
//! and `l2_load`, every flush of a filter or format raises `flush_to_os`
//! and `flush_to_disk` on its child, and this driver raises what QEMU's
//! generic layer raises on the node itself: `none` once opened, `pwritev`
//! and `pwritev_zero` before a write or a zeroing and `pwritev_done` after
//! it. A failed request reaches nothing below: the child sees no part of
//! it.

mod config;
mod rules;

use std::cmp::Reverse;
use std::sync::Arc;

use async_trait::async_trait;
use schema::block::{BlkdebugEvent, BlkdebugIoType, BlockdevOptionsBlkdebug};
use serde_json::{Map, Value as Json};

use crate::driver::{flush_child, BlockDriver, ChildRole, Extent, WriteFlags, ZeroFlags};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::filename::{exact_filename, qdict_bucket};
use crate::iobuf::IoBuf;
use crate::limits::Limits;
use crate::node::{NodeChild, ReadSource};
use crate::open::OpenContext;
use crate::permissions::{default_child_perms, ChildRoleFlags, Perm};
use rules::{Injected, Rules};

/// The largest buffer of zeroes written at once where zeroing falls back
/// to writing (QEMU's `MAX_BOUNCE_BUFFER`).
const MAX_BOUNCE: u64 = 16 << 20;

/// The limit options; 0 is unset.
#[derive(Debug, Clone, Copy, Default)]
struct Overrides {
    align: u32,
    max_transfer: u32,
    opt_write_zero: u32,
    max_write_zero: u32,
    opt_discard: u32,
    max_discard: u32,
}

/// A `blkdebug` node over its `image` child.
pub struct BlkdebugDriver {
    image: Arc<NodeChild>,
    rules: Rules,
    limits: Overrides,
    take_child_perms: Perm,
    unshare_child_perms: Perm,
    config: Option<String>,
    /// The options that change what the node does, as QEMU lists them in
    /// a `json:` file name (flattened: `inject-error.0.event`).
    strong: Map<String, Json>,
}

impl BlkdebugDriver {
    /// Opens the filter in QEMU's order, which decides which error a
    /// node with several faults reports: the sizes' signs, the rules
    /// (file first, then options), the child, the limits against it.
    pub async fn open(
        cx: &mut OpenContext<'_>,
        options: &BlockdevOptionsBlkdebug,
    ) -> BlockResult<Self> {
        let sizes = [
            ("align", options.align),
            ("max-transfer", options.max_transfer.map(i64::from)),
            ("opt-write-zero", options.opt_write_zero.map(i64::from)),
            ("max-write-zero", options.max_write_zero.map(i64::from)),
            ("opt-discard", options.opt_discard.map(i64::from)),
            ("max-discard", options.max_discard.map(i64::from)),
        ];
        for (name, value) in sizes {
            if let Some(value) = value.filter(|v| *v < 0) {
                return Err(invalid(format!(
                    "Value '{value}' is out of range for parameter '{name}'"
                )));
            }
        }
        let mut rules = match &options.config {
            Some(path) => config::read(path).await?,
            None => config::ConfigRules::default(),
        };
        rules
            .inject
            .extend(options.inject_error.iter().flatten().cloned());
        rules
            .set_state
            .extend(options.set_state.iter().flatten().cloned());
        let rules = Rules::new(&rules.inject, &rules.set_state)?;
        // QEMU names the node before its open makes the child, so an
        // inline child comes after it.
        cx.place_here();
        let role = ChildRoleFlags::FILTERED.union(ChildRoleFlags::PRIMARY);
        let image = cx.child(&options.image, ChildRole::Image, role).await?;
        let limits = check_limits(options, image.node().limits().request_alignment)?;
        rules.raise(BlkdebugEvent::None);
        Ok(BlkdebugDriver {
            image,
            rules,
            limits,
            take_child_perms: Perm::from_qapi(options.take_child_perms.as_deref().unwrap_or(&[])),
            unshare_child_perms: Perm::from_qapi(
                options.unshare_child_perms.as_deref().unwrap_or(&[]),
            ),
            config: options.config.clone(),
            strong: strong_options(options),
        })
    }

    /// Fails the request if an armed rule says so.
    async fn check(&self, offset: u64, len: u64, iotype: BlkdebugIoType) -> BlockResult<()> {
        match self.rules.check(offset, len, iotype) {
            Some(injected) => Err(injected_error(injected).await),
            None => Ok(()),
        }
    }

    /// `[offset, offset + len)` zeroed in pieces split at `opt-write-zero`
    /// boundaries: whole pieces are zeroed on the child, shorter ones are
    /// refused with `no_fallback` or else written as zeroes, as QEMU
    /// falls back when blkdebug refuses them.
    async fn zero_pieces(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        let align = u64::from(self.request_alignment().max(self.limits.opt_write_zero));
        for (at, n) in pieces(offset, len, align) {
            if n >= align {
                self.check(at, n, BlkdebugIoType::WriteZeroes).await?;
                self.image.write_zeroes(at, n, flags).await?;
            } else if flags.no_fallback {
                return Err(BlockError::new(
                    ErrorKind::NotSupported,
                    format!(
                        "blkdebug: zeroing {n} bytes below opt-write-zero {align} has no fast path"
                    ),
                ));
            } else {
                self.write_zero_buffer(
                    at,
                    n,
                    WriteFlags {
                        fua: flags.fua,
                        ..WriteFlags::default()
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Writes zeroes over `[offset, offset + len)` in buffers of at most
    /// the maximum transfer.
    async fn write_zero_buffer(&self, offset: u64, len: u64, flags: WriteFlags) -> BlockResult<()> {
        let max = match self.limits.max_transfer {
            0 => MAX_BOUNCE,
            max => u64::from(max).min(MAX_BOUNCE),
        };
        let zeroes = IoBuf::zeroed(len.min(max) as usize);
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(max);
            self.check(at, n, BlkdebugIoType::Write).await?;
            self.image
                .write(at, &zeroes.slice(0..n as usize), flags)
                .await?;
            at += n;
        }
        Ok(())
    }

    fn request_alignment(&self) -> u32 {
        self.limits.align.max(1)
    }
}

/// The error of an injected failure; without `immediately` only after
/// letting other tasks run, as QEMU reschedules the request first.
async fn injected_error(injected: Injected) -> BlockError {
    if !injected.immediately {
        tokio::task::yield_now().await;
    }
    BlockError::from_io(
        "blkdebug: injected error",
        std::io::Error::from_raw_os_error(injected.errno),
    )
}

/// Checks the limit options as QEMU does, against the larger of `align`
/// and the child's alignment, with QEMU's messages.
fn check_limits(options: &BlockdevOptionsBlkdebug, child_align: u32) -> BlockResult<Overrides> {
    let align = options.align.unwrap_or(0) as u64;
    if align != 0 && (align >= i32::MAX as u64 || !align.is_power_of_two()) {
        return Err(constraint("align", align));
    }
    let base = align.max(u64::from(child_align));
    let multiple_of = |name: &str, value: Option<i32>, of: u64| {
        let value = value.unwrap_or(0) as u64;
        if value != 0 && (value >= i32::MAX as u64 || !value.is_multiple_of(of)) {
            return Err(constraint(name, value));
        }
        Ok(value as u32)
    };
    let max_transfer = multiple_of("max-transfer", options.max_transfer, base)?;
    let opt_write_zero = multiple_of("opt-write-zero", options.opt_write_zero, base)?;
    let max_write_zero = multiple_of(
        "max-write-zero",
        options.max_write_zero,
        base.max(u64::from(opt_write_zero)),
    )?;
    let opt_discard = multiple_of("opt-discard", options.opt_discard, base)?;
    let max_discard = multiple_of(
        "max-discard",
        options.max_discard,
        base.max(u64::from(opt_discard)),
    )?;
    Ok(Overrides {
        align: align as u32,
        max_transfer,
        opt_write_zero,
        max_write_zero,
        opt_discard,
        max_discard,
    })
}

fn constraint(name: &str, value: u64) -> BlockError {
    invalid(format!("Cannot meet constraints with {name} {value}"))
}

fn invalid(message: String) -> BlockError {
    BlockError::new(ErrorKind::InvalidArgument, message)
}

/// `[offset, offset + len)` cut at multiples of `align`: a head up to the
/// first boundary, the aligned middle in one piece, a tail after the last
/// boundary; each as (offset, length).
fn pieces(offset: u64, len: u64, align: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = if !at.is_multiple_of(align) {
            (at / align + 1) * align
        } else if end - at >= align {
            end / align * align
        } else {
            end
        };
        let piece = (at, next.min(end) - at);
        at = next.min(end);
        Some(piece)
    })
}

/// The options QEMU shows in a `json:` file name (its
/// `strong_runtime_opts`), flattened as its option dictionary holds them
/// (`inject-error.0.event`), inserted in the order QEMU copies them, which
/// decides the order of members that share a bucket: `config`, the rules,
/// the limits. QEMU flattens a rule's members in its own dictionary's
/// order and copies them back walking the flat dictionary, which lists
/// the last flattened first.
fn strong_options(options: &BlockdevOptionsBlkdebug) -> Map<String, Json> {
    let mut strong = Map::new();
    if let Some(config) = &options.config {
        strong.insert("config".into(), Json::from(config.as_str()));
    }
    let inject = options
        .inject_error
        .iter()
        .flatten()
        .map(serde_json::to_value);
    let set_state = options.set_state.iter().flatten().map(serde_json::to_value);
    let lists: [(&str, Vec<_>); 2] = [
        ("inject-error", inject.collect()),
        ("set-state", set_state.collect()),
    ];
    for (list, rules) in lists {
        let mut flat = Vec::new();
        for (i, rule) in rules.into_iter().enumerate() {
            let Ok(Json::Object(members)) = rule else {
                continue;
            };
            let mut members: Vec<(usize, (String, Json))> = members
                .into_iter()
                .filter(|(_, value)| !value.is_null())
                .enumerate()
                .collect();
            members.sort_by_key(|(given, (name, _))| (qdict_bucket(name), Reverse(*given)));
            flat.extend(
                members
                    .into_iter()
                    .map(|(_, (name, value))| (format!("{list}.{i}.{name}"), value)),
            );
        }
        strong.extend(flat.into_iter().rev());
    }
    if let Some(align) = options.align {
        strong.insert("align".into(), Json::from(align));
    }
    for (name, value) in [
        ("max-transfer", options.max_transfer),
        ("opt-write-zero", options.opt_write_zero),
        ("max-write-zero", options.max_write_zero),
        ("opt-discard", options.opt_discard),
        ("max-discard", options.max_discard),
    ] {
        if let Some(value) = value {
            strong.insert(name.into(), Json::from(value));
        }
    }
    strong
}

#[async_trait]
impl BlockDriver for BlkdebugDriver {
    fn format_name(&self) -> &'static str {
        "blkdebug"
    }

    fn filtered(&self) -> Option<&NodeChild> {
        Some(&self.image)
    }

    async fn read(&self, offset: u64, buf: &IoBuf) -> BlockResult<()> {
        self.check(offset, buf.len() as u64, BlkdebugIoType::Read)
            .await?;
        self.image.read(offset, buf).await
    }

    async fn write(&self, offset: u64, buf: &IoBuf, flags: WriteFlags) -> BlockResult<()> {
        self.rules.raise(BlkdebugEvent::Pwritev);
        let result = async {
            self.check(offset, buf.len() as u64, BlkdebugIoType::Write)
                .await?;
            self.image.write(offset, buf, flags).await
        }
        .await;
        self.rules.raise(BlkdebugEvent::PwritevDone);
        result
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> BlockResult<()> {
        self.rules.raise(BlkdebugEvent::PwritevZero);
        let result = self.zero_pieces(offset, len, flags).await;
        self.rules.raise(BlkdebugEvent::PwritevDone);
        result
    }

    /// Discards in pieces split at `opt-discard` boundaries, each checked.
    async fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let align = match self.limits.opt_discard {
            0 => u64::MAX,
            opt => u64::from(opt),
        };
        for (at, n) in pieces(offset, len, align) {
            self.check(at, n, BlkdebugIoType::Discard).await?;
            self.image.discard(at, n).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> BlockResult<()> {
        self.check(0, 0, BlkdebugIoType::Flush).await?;
        flush_child(&self.image).await
    }

    async fn block_status(&self, offset: u64, len: u64) -> BlockResult<Extent> {
        self.check(offset, len, BlkdebugIoType::BlockStatus).await?;
        self.image.block_status(offset, len).await
    }

    /// QEMU's limits for the node: the options where given; otherwise
    /// any alignment, the child's transfer sizes, no zeroing or discard
    /// maximum.
    fn limits(&self) -> Limits {
        let child = self.image.node().limits();
        let set = |value: u32| (value != 0).then_some(value);
        Limits {
            request_alignment: self.request_alignment(),
            max_transfer: set(self.limits.max_transfer).or(child.max_transfer),
            opt_transfer: child.opt_transfer,
            max_write_zeroes: set(self.limits.max_write_zero).map(u64::from),
            max_discard: set(self.limits.max_discard).map(u64::from),
        }
    }

    /// Reads must pass the rules: never served around them.
    fn read_source(&self, _offset: u64, _len: u64) -> Option<ReadSource> {
        None
    }

    /// `blkdebug:CONFIG:IMAGE` while no option but `config` changes the
    /// node, as QEMU names it.
    fn filename(&self) -> String {
        if self.strong.keys().any(|key| key != "config") {
            return String::new();
        }
        exact_filename(&self.image.node()).map_or_else(String::new, |image| {
            format!("blkdebug:{}:{image}", self.config.as_deref().unwrap_or(""))
        })
    }

    fn strong_options(&self) -> Map<String, Json> {
        self.strong.clone()
    }

    fn is_protocol(&self) -> bool {
        true
    }

    /// QEMU's default rules, plus `take-child-perms`, minus
    /// `unshare-child-perms`.
    fn child_perm(
        &self,
        child: &NodeChild,
        writable: bool,
        perm: Perm,
        shared: Perm,
    ) -> (Perm, Perm) {
        let (perm, shared) = default_child_perms(child.flags(), writable, perm, shared);
        (
            perm | self.take_child_perms,
            shared & !self.unshare_child_perms,
        )
    }

    fn debug_event(&self, event: BlkdebugEvent) {
        self.rules.raise(event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn only_without_immediately_other_tasks_run_before_the_error() {
        for immediately in [true, false] {
            let ran = Arc::new(AtomicBool::new(false));
            let other = ran.clone();
            tokio::spawn(async move { other.store(true, Ordering::SeqCst) });
            let error = injected_error(Injected {
                errno: libc::ENOSPC,
                immediately,
            })
            .await;
            assert_eq!(ran.load(Ordering::SeqCst), !immediately);
            assert_eq!(
                (error.errno(), error.kind),
                (libc::ENOSPC, ErrorKind::NoSpace)
            );
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn pieces_split_at_boundaries() {
        let cut = |offset, len, align| pieces(offset, len, align).collect::<Vec<_>>();
        assert_eq!(cut(0, 8192, 4096), [(0, 8192)]);
        assert_eq!(
            cut(512, 8192, 4096),
            [(512, 3584), (4096, 4096), (8192, 512)]
        );
        assert_eq!(cut(512, 1024, 4096), [(512, 1024)]);
        assert_eq!(cut(0, 1024, 4096), [(0, 1024)]);
        assert_eq!(cut(4096, 5120, 4096), [(4096, 4096), (8192, 1024)]);
        assert_eq!(cut(100, 200, u64::MAX), [(100, 200)]);
    }
}
