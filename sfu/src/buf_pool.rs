//! Datagram storage handed back after sending and reused for the next outgoing packets, so a
//! forwarded packet is encrypted into memory that already exists (no allocation per packet).
//!
//! The buffers circulate: the node takes one for each copy it writes (str0m seals into it
//! through `Rtc::recycle_buffer`, a native listener's cipher through `seal_opus_into`), the
//! shell sends the datagram and gives the buffer back with [`Node::recycle`](crate::node::Node::recycle).

/// At most this many buffers wait in a pool: about 1.5 MB per worker when full of ordinary
/// buffers, at most 6 MB (the pool keeps buffers up to 4 × [`POOLED_CAPACITY`]). Each WebRTC
/// session also keeps up to 2 spares (str0m's `MAX_TX_SPARE`).
pub const MAX_POOLED: usize = 1024;

/// Capacity every pooled buffer has, so any RTP packet the node sends (MTU-sized at most) fits
/// without growing it.
pub const POOLED_CAPACITY: usize = 1500;

/// Spare datagram buffers, last in first out (the most recently used is warm in cache).
#[derive(Debug, Default)]
pub struct BufPool {
    bufs: Vec<Vec<u8>>,
}

impl BufPool {
    /// Keep `buf` for later. Dropped when the pool is full or the buffer is oddly large; a small
    /// one is grown once to [`POOLED_CAPACITY`] so it never has to grow while in use.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if self.bufs.len() >= MAX_POOLED || buf.capacity() > 4 * POOLED_CAPACITY {
            return;
        }
        buf.clear();
        buf.reserve_exact(POOLED_CAPACITY);
        self.bufs.push(buf);
    }

    /// A spare buffer (empty, [`POOLED_CAPACITY`] or more), if any.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.bufs.pop()
    }

    /// A spare buffer, or a new one of the pooled capacity.
    pub fn take_or_new(&mut self) -> Vec<u8> {
        self.take()
            .unwrap_or_else(|| Vec::with_capacity(POOLED_CAPACITY))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_with_room_for_a_datagram() {
        let mut pool = BufPool::default();
        let mut b = vec![7u8; 100];
        b.shrink_to_fit();
        pool.put(b);
        let b = pool.take().unwrap();
        assert!(b.is_empty());
        assert!(b.capacity() >= POOLED_CAPACITY);
        assert!(pool.take().is_none());
    }

    #[test]
    fn the_pool_is_bounded_and_refuses_huge_buffers() {
        let mut pool = BufPool::default();
        pool.put(Vec::with_capacity(64 * 1024));
        assert!(pool.is_empty(), "a 64 KB buffer would pin memory");
        for _ in 0..MAX_POOLED + 10 {
            pool.put(Vec::with_capacity(POOLED_CAPACITY));
        }
        assert_eq!(pool.len(), MAX_POOLED);
    }

    #[test]
    fn the_last_buffer_put_is_the_first_taken() {
        let mut pool = BufPool::default();
        pool.put(Vec::with_capacity(POOLED_CAPACITY));
        let b = Vec::with_capacity(POOLED_CAPACITY);
        let ptr = b.as_ptr();
        pool.put(b);
        let taken = pool.take().unwrap();
        assert_eq!(taken.as_ptr(), ptr);
    }
}
