//! The codec layer: how typed values become the bytes that are stored.
//!
//! Every stored byte in snapflow (log payloads, state snapshots, manifests) is MessagePack in
//! rmp-serde's format: written by [`encode`]/[`encode_into`] through snapflow's own writer
//! (`codec/msgpack.rs`, the bytes rmp-serde writes, faster), manifests by rmp-serde's named
//! serializer, and all of it read by rmp-serde. MessagePack integers are variable-width and never depend on the
//! platform's word size. Decoding is done from a bounded slice (the caller has already checked
//! its length against a limit), so a corrupt length prefix inside the bytes cannot make the
//! decoder allocate more than the slice could hold; every failure is an [`Error::Codec`].

pub(crate) mod msgpack;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Encodes `value` as compact MessagePack (structs as arrays) onto the end of `out`: the bytes
/// rmp-serde's default serializer writes, produced by a faster writer of our own
/// (`log/msgpack.rs`).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>, what: &str) -> Result<()> {
    msgpack::write(value, out).map_err(|e| Error::encode(what, e))
}

/// Encodes `value` as compact MessagePack (structs as arrays).
pub fn encode<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(value, &mut out, what)?;
    Ok(out)
}

/// Encodes `value` as MessagePack with field names, for metadata that must stay readable when
/// fields are added (manifests).
pub fn encode_named<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::encode(what, e))
}

/// Decodes MessagePack bytes. The whole slice must be consumed: trailing bytes are an error,
/// since they mean the bytes are not what the reader thinks they are.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    // `&[u8]` as a reader: lengths inside the bytes are checked against what is left of the
    // slice as it is read, never used to preallocate.
    let mut input = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut input);
    let value = T::deserialize(&mut de).map_err(|e| Error::decode(what, e))?;
    let rest = de.into_inner().len();
    if rest != 0 {
        return Err(Error::decode(
            what,
            format!("{rest} trailing bytes after the value"),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_trailing_bytes_and_garbage() {
        let mut bytes = encode(&(1u64, "x".to_string()), "t").expect("encode");
        let v: (u64, String) = decode(&bytes, "t").expect("decode");
        assert_eq!(v, (1, "x".to_string()));
        bytes.push(0);
        assert!(decode::<(u64, String)>(&bytes, "t").is_err());
        // A string header claiming 4 GiB in a 5-byte input fails without allocating it.
        let huge = [0xdb, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<String>(&huge, "t").is_err());
        let huge_array = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Vec<u64>>(&huge_array, "t").is_err());
    }
}
