//! How a node is born: one `match` on the schema's driver enum. Adding a
//! driver is one arm here and one file.
//!
//! Children given inline are opened first (QEMU registers them before their
//! parent too) and inherit the parent's `read-only`, `auto-read-only`,
//! `cache.*`, `force-share` and `active` unless they set them, and default
//! to `discard=unmap` (the parent's own policy already filters discards).
//! If anything fails, every node this call created is closed again.

use std::sync::Arc;

use schema::block::{
    BlockdevDetectZeroesOptions, BlockdevDiscardOptions, BlockdevDriver, BlockdevOptions,
    BlockdevRef,
};

use crate::driver::{BlockDriver, ChildRole};
use crate::error::{BlockError, BlockResult, ErrorKind};
use crate::file::FileDriver;
use crate::graph::GraphState;
use crate::node::{Node, NodeChild, NodeSettings};
use crate::null::NullDriver;
use crate::raw::RawDriver;

/// Opens a node and its inline children; all or nothing.
pub(crate) fn open_tree(
    state: &mut GraphState,
    options: &BlockdevOptions,
) -> BlockResult<Arc<Node>> {
    let mark = state.node_count();
    open_node(state, options, None).inspect_err(|_| state.unwind_to(mark))
}

fn open_node(
    state: &mut GraphState,
    options: &BlockdevOptions,
    parent: Option<&NodeSettings>,
) -> BlockResult<Arc<Node>> {
    if let Some(name) = &options.node_name {
        state.check_new_name(name)?;
    }
    let settings = node_settings(options, parent)?;
    let (driver, children): (Box<dyn BlockDriver>, Vec<NodeChild>) = match &options.driver {
        BlockdevDriver::File(file) => (Box::new(FileDriver::open(file, &settings)?), Vec::new()),
        BlockdevDriver::NullCo(null) => (Box::new(NullDriver::new(null)?), Vec::new()),
        BlockdevDriver::Raw(raw) => {
            let file = open_child(state, &raw.file, &settings)?;
            let driver = RawDriver::open(file.clone(), raw)?;
            let child = NodeChild::new(ChildRole::File, driver.file_role(), file);
            (Box::new(driver), vec![child])
        }
        BlockdevDriver::Qcow2(_) => {
            return Err(BlockError::new(
                ErrorKind::NotSupported,
                "Driver 'qcow2' is not supported yet",
            ))
        }
    };
    state.register(options.node_name.clone(), driver, settings, children)
}

/// A child given by name, or opened from its inline definition.
fn open_child(
    state: &mut GraphState,
    child: &BlockdevRef,
    parent: &NodeSettings,
) -> BlockResult<Arc<Node>> {
    match child {
        BlockdevRef::Reference(name) => state.find(name).ok_or_else(|| {
            BlockError::new(
                ErrorKind::InvalidArgument,
                format!("Cannot find device='{name}' nor node-name='{name}'"),
            )
        }),
        BlockdevRef::Definition(options) => open_node(state, options, Some(parent)),
    }
}

/// The node's generic settings, with inheritance from an inline parent.
fn node_settings(
    options: &BlockdevOptions,
    parent: Option<&NodeSettings>,
) -> BlockResult<NodeSettings> {
    let inherit = |own: Option<bool>, from_parent: fn(&NodeSettings) -> bool| {
        own.or(parent.map(from_parent)).unwrap_or(false)
    };
    let cache = options.cache.clone().unwrap_or_default();
    let settings = NodeSettings {
        read_only: inherit(options.read_only, |p| p.read_only),
        auto_read_only: inherit(options.auto_read_only, |p| p.auto_read_only),
        inactive: inherit(options.active.map(|active| !active), |p| p.inactive),
        force_share: inherit(options.force_share, |p| p.force_share),
        discard_unmap: match options.discard {
            Some(discard) => discard == BlockdevDiscardOptions::Unmap,
            None => parent.is_some(),
        },
        detect_zeroes: options.detect_zeroes.unwrap_or_default(),
        cache_direct: inherit(cache.direct, |p| p.cache_direct),
        cache_no_flush: inherit(cache.no_flush, |p| p.cache_no_flush),
    };
    if settings.detect_zeroes == BlockdevDetectZeroesOptions::Unmap && !settings.discard_unmap {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
        ));
    }
    if settings.force_share && !settings.read_only {
        return Err(BlockError::new(
            ErrorKind::InvalidArgument,
            "force-share=on can only be used with read-only images",
        ));
    }
    Ok(settings)
}
