//! Node and origin-log identifiers and their human-checkable text form.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// Crockford-style base32 without i, l, o, u: nothing a person can misread.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A node's identity: the first 16 bytes of SHA-256 over its certificate's
/// SubjectPublicKeyInfo. Whoever holds the key holds the id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 16]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseIdError {
    #[error("node id has {0} characters after removing dashes; expected 27")]
    Length(usize),
    #[error("node id contains '{0}', which is not in the id alphabet (0-9, a-z without i l o u)")]
    Char(char),
    #[error("node id checksum does not match: a character was mistyped")]
    Checksum,
    #[error("origin must be NODE_ID.EPOCH with an 8-digit hex epoch")]
    Origin,
}

impl NodeId {
    pub fn from_spki(spki_der: &[u8]) -> Self {
        let digest = Sha256::digest(spki_der);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        NodeId(id)
    }

    /// The first two groups: enough to tell nodes apart in logs and tables.
    pub fn short(&self) -> String {
        self.to_string()[..9].to_string()
    }

    /// 26 base32 digits for the 128 bits (2 zero padding bits at the end).
    fn digits(&self) -> [u8; 26] {
        let mut out = [0u8; 26];
        let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
        for b in self.0 {
            acc = (acc << 8) | b as u32;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out[n] = ((acc >> bits) & 31) as u8;
                n += 1;
            }
        }
        out[25] = ((acc << (5 - bits)) & 31) as u8;
        out
    }
}

/// Luhn mod 32: catches every single mistyped digit and most swaps of
/// neighbours, which a truncated hash would miss one time in 256.
fn luhn32(digits: &[u8], has_check: bool) -> u32 {
    let mut factor = if has_check { 1 } else { 2 };
    let mut sum = 0u32;
    for d in digits.iter().rev() {
        let addend = factor * *d as u32;
        factor = 3 - factor;
        sum += addend / 32 + addend % 32;
    }
    sum % 32
}

impl fmt::Display for NodeId {
    /// 26 id digits plus one check digit, in dash-separated groups of 4.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.digits();
        let check = (32 - luhn32(&digits, false)) % 32;
        for (i, d) in digits.iter().chain(std::iter::once(&(check as u8))).enumerate() {
            if i > 0 && i % 4 == 0 {
                f.write_str("-")?;
            }
            write!(f, "{}", ALPHABET[*d as usize] as char)?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl std::str::FromStr for NodeId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digits = Vec::with_capacity(27);
        for c in s.chars().filter(|c| *c != '-') {
            let lc = c.to_ascii_lowercase() as u8;
            let v = ALPHABET.iter().position(|a| *a == lc).ok_or(ParseIdError::Char(c))?;
            digits.push(v as u8);
        }
        if digits.len() != 27 {
            return Err(ParseIdError::Length(digits.len()));
        }
        if luhn32(&digits, true) != 0 || digits[25] & 0b11 != 0 {
            return Err(ParseIdError::Checksum);
        }
        let (mut acc, mut bits, mut id, mut n) = (0u32, 0u32, [0u8; 16], 0usize);
        for d in &digits[..26] {
            acc = (acc << 5) | *d as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                id[n] = (acc >> bits) as u8;
                n += 1;
            }
        }
        Ok(NodeId(id))
    }
}

/// One append-only log: a node's id plus the epoch chosen when the log was
/// started. A node restored from an old backup starts a new epoch instead of
/// reusing sequence numbers its earlier self already gave out.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Origin {
    pub node: NodeId,
    pub epoch: u32,
}

impl Origin {
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&self.node.0);
        b[16..].copy_from_slice(&self.epoch.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 20 {
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        let epoch = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
        Some(Origin {
            node: NodeId(id),
            epoch,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:08x}", self.node, self.epoch)
    }
}

impl std::str::FromStr for Origin {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (node, epoch) = s.rsplit_once('.').ok_or(ParseIdError::Origin)?;
        if epoch.len() != 8 {
            return Err(ParseIdError::Origin);
        }
        let epoch = u32::from_str_radix(epoch, 16).map_err(|_| ParseIdError::Origin)?;
        Ok(Origin {
            node: node.parse()?,
            epoch,
        })
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Origin::from_bytes(&b).ok_or_else(|| serde::de::Error::custom("origin must be 20 bytes"))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        let arr: [u8; 16] = b
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("node id must be 16 bytes"))?;
        Ok(NodeId(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn node_id_text_round_trips(bytes in any::<[u8; 16]>(), epoch in any::<u32>()) {
            let id = NodeId(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 33);
            prop_assert_eq!(text.parse::<NodeId>(), Ok(id));
            prop_assert_eq!(text.to_uppercase().parse::<NodeId>(), Ok(id));
            let origin = Origin { node: id, epoch };
            prop_assert_eq!(origin.to_string().parse::<Origin>(), Ok(origin));
            prop_assert_eq!(Origin::from_bytes(&origin.to_bytes()), Some(origin));
        }

        #[test]
        fn one_mistyped_character_is_caught(bytes in any::<[u8; 16]>(), pos in 0usize..27, delta in 1u8..32) {
            let text: Vec<u8> = NodeId(bytes).to_string().bytes().filter(|c| *c != b'-').collect();
            let mut typo = text.clone();
            let idx = ALPHABET.iter().position(|a| *a == typo[pos]).unwrap(); // every char came from ALPHABET
            typo[pos] = ALPHABET[(idx + delta as usize) % 32];
            let typo = String::from_utf8(typo).unwrap(); // ALPHABET is ASCII
            prop_assert!(typo.parse::<NodeId>().is_err());
        }
    }

    #[test]
    fn ids_come_from_the_key() {
        let a = NodeId::from_spki(b"key a");
        assert_eq!(a, NodeId::from_spki(b"key a"));
        assert_ne!(a, NodeId::from_spki(b"key b"));
        assert_eq!(a.short().len(), 9);
    }
}
