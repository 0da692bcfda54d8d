//! The global allocator, with one switch: zero memory as it is freed.
//!
//! wizer snapshots every non-zero byte of linear memory into the packed
//! component's data segments. Without this, the ONNX file and the proto and
//! graphs built from it stay behind in freed chunks: tens of MB of dead data
//! in every packed model's image. `load` turns zeroing on while it works; it
//! is off whenever a request runs, so predict pays nothing for it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

static ZEROING: AtomicBool = AtomicBool::new(false);

pub fn zero_freed_memory(on: bool) {
    ZEROING.store(on, Ordering::Relaxed);
}

struct ZeroOnFree;

#[global_allocator]
static ALLOCATOR: ZeroOnFree = ZeroOnFree;

// SAFETY: every call forwards to `System` with the caller's layout; zeroing
// writes only within the block being freed, before it is freed.
unsafe impl GlobalAlloc for ZeroOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ZEROING.load(Ordering::Relaxed) {
            unsafe { ptr.write_bytes(0, layout.size()) };
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ZEROING.load(Ordering::Relaxed) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Move, so that the old block is freed (and zeroed) through `dealloc`
        // rather than shrunk or left behind by the system allocator.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
