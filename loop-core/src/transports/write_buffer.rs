//! A transport's pending output: bytes the kernel did not take yet, in order.

/// Compact once this many consumed bytes sit at the front (and they outnumber the rest).
const COMPACT_AFTER: usize = 64 * 1024;

#[derive(Default)]
pub struct WriteBuffer {
    data: Vec<u8>,
    start: usize,
    /// The largest size the buffer reached (for the transport table).
    pub high_water: usize,
}

impl WriteBuffer {
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.start..]
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.high_water = self.high_water.max(self.len());
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.data.len());
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        } else if self.start >= COMPACT_AFTER && self.start > self.len() {
            self.data.drain(..self.start);
            self.start = 0;
        }
    }

    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_partial_consumes_and_compaction() {
        let mut b = WriteBuffer::default();
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            let chunk: Vec<u8> = (0..(i % 300 + 1)).map(|j| (i + j) as u8).collect();
            b.extend(&chunk);
            expected.extend_from_slice(&chunk);
            let n = (i as usize * 7) % (b.len() + 1);
            assert_eq!(&b.as_slice()[..n], &expected[..n]);
            b.consume(n);
            expected.drain(..n);
            assert_eq!(b.as_slice(), &expected[..]);
        }
        assert!(b.high_water >= b.len());
    }
}
