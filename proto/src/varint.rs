//! LEB128 varints: seven bits a byte, low group first, the top bit set on
//! every byte but the last. Frame lengths, item headers and range proofs
//! use them; each reader bounds them in its own terms.

/// Appends `v` in its shortest form.
pub(crate) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
