//! What happened, in order: kept as readable lines when asked for, and
//! always folded into a hash, so two runs of one seed can be compared.

use ferry_sync::Time;

pub struct Trace {
    keep: bool,
    lines: Vec<String>,
    hash: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Trace {
    pub fn new(keep: bool) -> Self {
        Trace {
            keep,
            lines: Vec::new(),
            hash: FNV_OFFSET,
        }
    }

    fn fold(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= *b as u64;
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn line(&mut self, at: Time, what: &str) {
        self.fold(&at.0.to_le_bytes());
        self.fold(what.as_bytes());
        if self.keep {
            self.lines.push(format!("{:>12.6}  {what}", at.as_secs_f64()));
        }
    }

    /// Every packet put on a link, by connection, direction and size.
    pub fn packet(&mut self, conn: u64, end: usize, size: usize) {
        self.fold(&conn.to_le_bytes());
        self.fold(&[end as u8]);
        self.fold(&(size as u64).to_le_bytes());
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}
