//! [`Dynamic`]: a MessagePack value decoded without knowing its Rust type, for tools that read
//! stored state (the `snapflow` command-line tool). A leaf of `state`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A decoded MessagePack value. Serializes as JSON-friendly data: maps with non-string keys
/// get their keys' text ([`Display`](fmt::Display)), bytes become arrays of numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Dynamic {
    /// `nil` (also a unit or `None`).
    Nil,
    /// A boolean.
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Binary data.
    Bytes(Vec<u8>),
    /// An array (a struct is stored as the array of its fields, in order).
    Array(Vec<Dynamic>),
    /// A map, in stored order.
    Map(Vec<(Dynamic, Dynamic)>),
}

impl Dynamic {
    /// Decodes MessagePack bytes (the whole slice must be one value).
    pub fn from_msgpack(bytes: &[u8]) -> crate::error::Result<Dynamic> {
        crate::codec::decode(bytes, "a MessagePack value")
    }
}

impl fmt::Display for Dynamic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dynamic::Nil => f.write_str("null"),
            Dynamic::Bool(b) => write!(f, "{b}"),
            Dynamic::Int(i) => write!(f, "{i}"),
            Dynamic::UInt(u) => write!(f, "{u}"),
            Dynamic::Float(x) => write!(f, "{x}"),
            Dynamic::Str(s) => f.write_str(s),
            Dynamic::Bytes(b) => write!(f, "{b:?}"),
            Dynamic::Array(a) => {
                f.write_str("[")?;
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Dynamic::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}:{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl Serialize for Dynamic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Dynamic::Nil => s.serialize_unit(),
            Dynamic::Bool(b) => s.serialize_bool(*b),
            Dynamic::Int(i) => s.serialize_i64(*i),
            Dynamic::UInt(u) => s.serialize_u64(*u),
            Dynamic::Float(x) => s.serialize_f64(*x),
            Dynamic::Str(x) => s.serialize_str(x),
            Dynamic::Bytes(b) => {
                let mut seq = s.serialize_seq(Some(b.len()))?;
                for x in b {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Dynamic::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Dynamic::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    match k {
                        Dynamic::Str(k) => map.serialize_entry(k, v)?,
                        other => map.serialize_entry(&other.to_string(), v)?,
                    }
                }
                map.end()
            }
        }
    }
}

struct DynamicVisitor;

impl<'de> Visitor<'de> for DynamicVisitor {
    type Value = Dynamic;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::Nil)
    }
    fn visit_none<E: de::Error>(self) -> Result<Dynamic, E> {
        Ok(Dynamic::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Dynamic, D::Error> {
        Dynamic::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Dynamic, E> {
        Ok(Dynamic::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dynamic, E> {
        Ok(if v >= 0 {
            Dynamic::UInt(v as u64)
        } else {
            Dynamic::Int(v)
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dynamic, E> {
        Ok(Dynamic::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dynamic, E> {
        Ok(Dynamic::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dynamic, E> {
        Ok(Dynamic::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Dynamic, E> {
        Ok(Dynamic::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Dynamic, E> {
        Ok(Dynamic::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Dynamic, E> {
        Ok(Dynamic::Bytes(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dynamic, A::Error> {
        // The stored length is untrusted: grow as elements arrive, never reserve it up front.
        let mut out = Vec::new();
        while let Some(x) = seq.next_element()? {
            out.push(x);
        }
        Ok(Dynamic::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dynamic, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = map.next_entry()? {
            out.push(e);
        }
        Ok(Dynamic::Map(out))
    }
}

impl<'de> Deserialize<'de> for Dynamic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dynamic, D::Error> {
        d.deserialize_any(DynamicVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_stored_value_decodes_without_its_type() {
        #[derive(serde::Serialize)]
        struct Account {
            owner: String,
            balance: i64,
            tags: Vec<u8>,
        }
        let bytes = crate::codec::encode(
            &(
                7u64,
                Account {
                    owner: "ada".into(),
                    balance: -3,
                    tags: vec![1, 2],
                },
            ),
            "test",
        )
        .expect("encode");
        let d = Dynamic::from_msgpack(&bytes).expect("decode");
        assert_eq!(d.to_string(), "[7,[ada,-3,[1,2]]]");
        assert!(Dynamic::from_msgpack(&bytes[..bytes.len() - 1]).is_err());
    }
}
