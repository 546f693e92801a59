//! MurmurHash3 x86_32, the hash flagd's `fractional` buckets with (seed 0).
//!
//! Written as a streaming hasher so a bucketing key made of several pieces (the flag key and the
//! targeting key, or the parts of a `cat`) is hashed without first being joined into a string.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Incremental MurmurHash3 x86_32: `write` any number of byte slices, then `finish`.
#[derive(Clone, Debug)]
pub(crate) struct Murmur3 {
    h: u32,
    tail: u32,
    tail_len: u32,
    len: u32,
}

impl Murmur3 {
    pub(crate) fn new(seed: u32) -> Self {
        Murmur3 {
            h: seed,
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u32);
        while self.tail_len > 0 {
            let Some((&first, rest)) = bytes.split_first() else {
                return;
            };
            self.tail |= u32::from(first) << (8 * self.tail_len);
            self.tail_len += 1;
            bytes = rest;
            if self.tail_len == 4 {
                self.block(self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut chunks = bytes.chunks_exact(4);
        for chunk in &mut chunks {
            self.block(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            self.tail |= u32::from(b) << (8 * i);
        }
        self.tail_len = chunks.remainder().len() as u32;
    }

    pub(crate) fn finish(&self) -> u32 {
        let mut h = self.h;
        if self.tail_len > 0 {
            h ^= mix_k(self.tail);
        }
        fmix(h ^ self.len)
    }

    fn block(&mut self, k: u32) {
        self.h ^= mix_k(k);
        self.h = self
            .h
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
}

fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash of one byte string with seed 0, as flagd computes it.
#[cfg(test)]
pub(crate) fn hash(bytes: &[u8]) -> u32 {
    let mut m = Murmur3::new(0);
    m.write(bytes);
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_vectors() {
        assert_eq!(hash(b""), 0);
        assert_eq!(hash(b"hello"), 0x248b_fa47);
        assert_eq!(
            hash(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    #[test]
    fn streaming_in_pieces_equals_one_shot() {
        let text = b"fractional-flagjon@company.com-and-more";
        for split_a in 0..text.len() {
            for split_b in split_a..text.len() {
                let mut m = Murmur3::new(0);
                m.write(&text[..split_a]);
                m.write(&text[split_a..split_b]);
                m.write(&text[split_b..]);
                assert_eq!(m.finish(), hash(text), "split at {split_a}/{split_b}");
            }
        }
    }
}
