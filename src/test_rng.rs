//! A small deterministic generator for the tests that feed random input, so
//! that a failure replays the same bytes: xorshift64 (Marsaglia, 2003).

pub(crate) struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        // xorshift never leaves 0.
        TestRng(seed | 1)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    /// A byte, half the time a small one: the versions, lengths, types and
    /// zeros that parsers check, so input gets past the first test.
    pub fn byte(&mut self) -> u8 {
        if self.below(2) == 0 {
            self.below(6) as u8
        } else {
            self.below(256) as u8
        }
    }
}
