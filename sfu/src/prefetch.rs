//! Cache prefetch for the fan-out: the forward loop writes one packet into many listeners'
//! sessions in turn, and in a node with thousands of callers each session's state has left
//! the caches since its last packet (20 ms ago). Waited for one listener after another, those
//! misses were most of the cost of a forwarded copy (docs/BENCHMARKS.md, the cache-flushed
//! bench row). Fetching a window of listeners' lines first, in a few passes that each follow
//! pointers the previous pass fetched, lets the loads of those listeners overlap.

/// Start fetching every cache line of `len` bytes at `p` (at least the line of `p`). A hint
/// only: no value changes, and nothing happens on targets without the instruction.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = p.wrapping_sub(p as usize & 63);
        let end = (p as usize).saturating_add(len.max(1));
        // Every line's address is below `end`: nothing overflows, even at the top of memory.
        for i in 0..(end - start as usize).div_ceil(64) {
            let line = start.wrapping_add(i * 64);
            // SAFETY: a prefetch never faults, whatever the address, and has no effect a
            // program can observe but timing; SSE is in the x86_64 baseline. (Newer Rust
            // makes the intrinsic safe to call: hence the allow.)
            #[allow(unused_unsafe)]
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    line as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// [`prefetch`] of one value's own bytes.
#[inline(always)]
pub(crate) fn prefetch_of<T>(value: &T) {
    prefetch(value as *const T as *const u8, std::mem::size_of::<T>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_only_a_hint() {
        // Null, unaligned, unmapped and at the top of the address space: no fault, no panic.
        prefetch(std::ptr::null(), 0);
        prefetch(3usize as *const u8, 1);
        prefetch(0xdead_beef_usize as *const u8, 4096);
        prefetch(usize::MAX as *const u8, 1000);
        let v = vec![7u8; 1000];
        prefetch(v.as_ptr(), v.len());
        prefetch_of(&v);
        assert!(v.iter().all(|&b| b == 7));
    }
}
