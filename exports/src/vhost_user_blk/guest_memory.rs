//! A descriptor chain as I/O buffers that point straight into guest
//! memory: the data of a request moves between the guest's pages and the
//! node with no copy in between.
//!
//! Every descriptor is checked here, before anything is read or written:
//! its range must lie inside the guest's memory, device-readable
//! descriptors must come before device-writable ones, and a chain may not
//! have more than [`MAX_DESCRIPTORS`] of them (the queue library already
//! ends chains that loop or exceed the queue size). The buffers keep the
//! memory map they point into alive, so a frontend that replaces its
//! memory table while requests run cannot unmap pages under them.

use std::sync::Arc;

use block::IoBuf;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The guest memory map of one frontend.
pub type GuestMemory = GuestMemoryMmap<()>;

/// The most descriptors in one chain (the kernel's `IOV_MAX`).
pub const MAX_DESCRIPTORS: usize = 1024;

/// A chain, split into what the device reads and what it writes.
pub struct MappedChain {
    /// The head descriptor's index (what goes back in the used ring).
    pub head: u16,
    /// The device-readable bytes, in order.
    pub readable: IoBuf,
    /// The device-writable bytes, in order.
    pub writable: IoBuf,
    /// What was wrong with the chain, if anything.
    pub fault: Option<ChainFault>,
}

/// Why a chain cannot be served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFault {
    /// A descriptor points outside guest memory.
    OutOfBounds,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    TooLong,
}

impl std::fmt::Display for ChainFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainFault::OutOfBounds => "a descriptor points outside guest memory",
            ChainFault::ReadableAfterWritable => {
                "a device-readable descriptor follows a device-writable one"
            }
            ChainFault::TooLong => "the chain has too many descriptors",
        })
    }
}

/// Maps `chain`. On a fault the buffers hold the descriptors that mapped
/// before it, and the writable side keeps its last descriptor if that
/// one mapped (the status byte can then still report the error).
pub fn map_chain(
    chain: DescriptorChain<Arc<GuestMemory>>,
    memory: &Arc<GuestMemory>,
) -> MappedChain {
    let head = chain.head_index();
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut fault = None;
    for (count, descriptor) in chain.enumerate() {
        if count == MAX_DESCRIPTORS {
            fault.get_or_insert(ChainFault::TooLong);
            break;
        }
        if !descriptor.is_write_only() && !writable.is_empty() {
            fault.get_or_insert(ChainFault::ReadableAfterWritable);
            continue;
        }
        let mapped = map_range(memory, descriptor.addr(), descriptor.len() as usize);
        let side = if descriptor.is_write_only() {
            &mut writable
        } else {
            &mut readable
        };
        match mapped {
            Some(buf) => side.push(Some(buf)),
            None => {
                fault.get_or_insert(ChainFault::OutOfBounds);
                side.push(None);
            }
        }
    }
    // The status byte is the last writable byte. A faulty chain keeps
    // only the last writable descriptor, and only if it mapped, so that
    // the error can be reported there and nowhere else.
    let writable = if fault.is_some() {
        IoBuf::concat(writable.pop().flatten())
    } else {
        IoBuf::concat(writable.into_iter().flatten())
    };
    MappedChain {
        head,
        readable: IoBuf::concat(readable.into_iter().flatten()),
        writable,
        fault,
    }
}

/// `len` bytes of guest memory at `addr`, which may span several
/// regions; `None` if any byte lies outside guest memory.
fn map_range(memory: &Arc<GuestMemory>, addr: GuestAddress, len: usize) -> Option<IoBuf> {
    let mut parts = Vec::new();
    let mut mapped = 0;
    for slice in memory.get_slices(addr, len) {
        let slice = slice.ok()?;
        let owner: Arc<dyn std::any::Any + Send + Sync> = memory.clone();
        let ptr = slice.ptr_guard_mut().as_ptr();
        mapped += slice.len();
        // SAFETY: the slice lies inside a region of `memory`, which stays
        // mapped while the `Arc` lives; guest memory is only reached
        // through volatile copies and the kernel, never through Rust
        // references (vm-memory hands out no references to it either).
        parts.push(unsafe { IoBuf::from_shared(owner, ptr, slice.len()) });
    }
    (mapped == len).then(|| IoBuf::concat(parts))
}
