//! The allocator every model gets (cargo feature `call-allocator`, on by
//! default): free lists of small blocks in front of Rust's `System`
//! allocator (dlmalloc on wasm32).
//!
//! A guest call allocates and frees a dozen small blocks whatever the model
//! does: the canonical ABI puts every string and list of the arguments in a
//! block of its own (the host calls `cabi_realloc` for each), the bindings
//! collect them into vectors, and the outputs go back the same way before the
//! post-return frees them. Measured on the echo model, those allocations were
//! the largest part of the call boundary inside the guest. Here a block of
//! 16 bytes to 2 KiB is a pop from, and a push onto, the free list of its
//! size class (powers of two); larger blocks go to `System` as before.
//!
//! Small blocks are never given back to `System`: a model keeps the most
//! small-block memory it ever had live at once, class by class, which for a
//! model serving calls one at a time is a few KiB. A model that wants another
//! allocator turns the feature off (`default-features = false`) and installs
//! its own `#[global_allocator]`.
//!
//! Wasm components run one call at a time on one thread (wasm32-wasip2 has no
//! threads), which is what makes the unsynchronised free lists sound; the
//! allocator is only installed on wasm32.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes 16, 32, ..., 2048 bytes.
const CLASSES: usize = 8;
const SMALLEST: usize = 16;
const LARGEST: usize = SMALLEST << (CLASSES - 1);
/// Fresh small blocks are carved from chunks of this size, aligned to it, so
/// that every block is aligned to its own size.
const CHUNK: usize = 64 * 1024;

pub struct CallAllocator {
    state: UnsafeCell<State>,
}

struct State {
    /// Per class, the first free block; each free block holds the next.
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    next: *mut u8,
    end: *mut u8,
}

// SAFETY: installed only on wasm32, where a component has one thread and
// allocator calls never interleave.
unsafe impl Sync for CallAllocator {}

impl CallAllocator {
    pub const fn new() -> Self {
        CallAllocator {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
        }
    }
}

impl Default for CallAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class of a layout, or `None` if it is too large for one. A block
/// of a class is aligned to the class's size, so alignment counts as size.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align());
    if size > LARGEST {
        return None;
    }
    let size = size.max(SMALLEST).next_power_of_two();
    Some((size.trailing_zeros() - SMALLEST.trailing_zeros()) as usize)
}

impl State {
    /// A block of `class` from a chunk, or null if `System` has no memory.
    #[cold]
    unsafe fn carve(&mut self, class: usize) -> *mut u8 {
        let size = SMALLEST << class;
        if (self.end as usize) - (self.next as usize) < size {
            // The rest of the old chunk (less than one block of this class)
            // is left unused.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, CHUNK)) };
            if chunk.is_null() {
                return chunk;
            }
            self.next = chunk;
            self.end = unsafe { chunk.add(CHUNK) };
        }
        // The chunk is CHUNK-aligned and blocks of every class come from it,
        // so round `next` up to this class's size to align the block.
        let start = (self.next as usize).next_multiple_of(size);
        if start + size > self.end as usize {
            self.next = self.end;
            return unsafe { self.carve(class) };
        }
        self.next = (start + size) as *mut u8;
        start as *mut u8
    }
}

unsafe impl GlobalAlloc for CallAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            return unsafe { System.alloc(layout) };
        };
        let state = unsafe { &mut *self.state.get() };
        let block = state.free[class];
        if block.is_null() {
            return unsafe { state.carve(class) };
        }
        state.free[class] = unsafe { block.cast::<*mut u8>().read() };
        block
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            return unsafe { System.dealloc(block, layout) };
        };
        let state = unsafe { &mut *self.state.get() };
        unsafe { block.cast::<*mut u8>().write(state.free[class]) };
        state.free[class] = block;
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            (Some(old), Some(new)) if old == new => block,
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_reused_and_kept_apart() {
        let heap = CallAllocator::new();
        let layout = |size, align| Layout::from_size_align(size, align).unwrap();
        unsafe {
            let a = heap.alloc(layout(24, 8));
            let b = heap.alloc(layout(100, 4));
            let c = heap.alloc(layout(1, 64));
            let big = heap.alloc(layout(5000, 8));
            for (p, align) in [(a, 32), (b, 128), (c, 64), (big, 8)] {
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
            }
            a.write_bytes(0xa, 24);
            b.write_bytes(0xb, 100);
            c.write(0xc);
            assert!((0..24).all(|i| *a.add(i) == 0xa) && *c == 0xc);
            // A freed block is the next of its class.
            heap.dealloc(a, layout(24, 8));
            assert_eq!(heap.alloc(layout(30, 8)), a);
            // Growing within a class keeps the block; across classes, the data.
            b.write_bytes(0xb, 100);
            assert_eq!(heap.realloc(b, layout(100, 4), 128), b);
            let moved = heap.realloc(b, layout(128, 4), 3000);
            assert!((0..100).all(|i| *moved.add(i) == 0xb));
            let moved = heap.realloc(moved, layout(3000, 4), 40);
            assert!((0..40).all(|i| *moved.add(i) == 0xb));
            heap.dealloc(moved, layout(40, 4));
            heap.dealloc(c, layout(1, 64));
            heap.dealloc(big, layout(5000, 8));
        }
    }

    #[test]
    fn many_blocks_of_every_class_fill_several_chunks() {
        let heap = CallAllocator::new();
        let mut live = Vec::new();
        unsafe {
            for i in 0..20_000usize {
                let size = 1 + (i * 37) % LARGEST;
                let layout = Layout::from_size_align(size, 1).unwrap();
                let p = heap.alloc(layout);
                assert!(!p.is_null());
                p.write_bytes((i % 251) as u8, size);
                live.push((p, layout, (i % 251) as u8));
            }
            for (p, layout, byte) in live {
                assert!((0..layout.size()).all(|k| *p.add(k) == byte));
                heap.dealloc(p, layout);
            }
        }
    }
}
