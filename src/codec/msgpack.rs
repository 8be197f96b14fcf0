//! A MessagePack encoder that appends straight to a `Vec<u8>`.
//!
//! It writes, byte for byte, what rmp-serde's default serializer (`rmp_serde::encode::write`)
//! writes: the smallest integer, string, binary, array and map headers; structs as arrays of
//! their fields; enum variants by name (`{name: value}` when they carry data); `u128`/`i128` as
//! 16 big-endian bytes; sequences and maps of unknown length buffered and then given their
//! exact header; rmp-serde's ext structs handed to rmp-serde itself; not human readable. So
//! rmp-serde decodes everything it writes, and the stored format stays rmp-serde's.
//!
//! Why it exists: encoding keyed state is the largest CPU cost of a checkpoint, and
//! rmp-serde's writer goes through `io::Write` and error plumbing for every marker and every
//! integer. Writing into the vector directly roughly halves the time per entry (see
//! `benches/state_snapshot.rs`). Byte equality with rmp-serde is checked over every serde data
//! model type by `tests/codec_msgpack.rs`.

use std::fmt;

use serde::ser::{self, Serialize};

/// Why a value could not be encoded: an error raised by the value's own `Serialize`, or a
/// length MessagePack cannot express (above `u32::MAX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, EncodeError>;

/// Appends the MessagePack encoding of `value` to `out` (the bytes rmp-serde would write). On
/// error, `out` may hold part of the value.
pub(crate) fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    value.serialize(&mut Encoder { out })
}

/// Appends the header of an array of `len` elements (for values written part by part).
pub(crate) fn write_array_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    Encoder { out }.array_header(len)
}

/// Appends the header of a binary of `len` bytes (for bytes written part by part).
pub(crate) fn write_bin_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    Encoder { out }.header(&BIN, len)
}

/// The serializer: every method appends to `out`.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

fn too_long(what: &str, len: usize) -> EncodeError {
    EncodeError(format!(
        "{what} of length {len} is longer than MessagePack can express (u32::MAX)"
    ))
}

/// The markers of one kind of length header.
struct Header {
    what: &'static str,
    /// The "fix" marker, or-ed with the length when it is below `fix_limit` (0: no fix form).
    fix: u8,
    fix_limit: usize,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
}

const ARRAY: Header = Header {
    what: "array",
    fix: 0x90,
    fix_limit: 16,
    m8: None,
    m16: 0xdc,
    m32: 0xdd,
};
const MAP: Header = Header {
    what: "map",
    fix: 0x80,
    fix_limit: 16,
    m8: None,
    m16: 0xde,
    m32: 0xdf,
};
const STR: Header = Header {
    what: "string",
    fix: 0xa0,
    fix_limit: 32,
    m8: Some(0xd9),
    m16: 0xda,
    m32: 0xdb,
};
const BIN: Header = Header {
    what: "binary",
    fix: 0,
    fix_limit: 0,
    m8: Some(0xc4),
    m16: 0xc5,
    m32: 0xc6,
};

impl Encoder<'_> {
    #[inline]
    fn uint(&mut self, v: u64) {
        if v < 128 {
            self.out.push(v as u8);
        } else if v < 256 {
            self.out.extend_from_slice(&[0xcc, v as u8]);
        } else if v < 65_536 {
            let b = (v as u16).to_be_bytes();
            self.out.extend_from_slice(&[0xcd, b[0], b[1]]);
        } else if v < 4_294_967_296 {
            let b = (v as u32).to_be_bytes();
            self.out.extend_from_slice(&[0xce, b[0], b[1], b[2], b[3]]);
        } else {
            self.out.push(0xcf);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    #[inline]
    fn sint(&mut self, v: i64) {
        if v >= 0 {
            // rmp writes non-negative signed integers exactly like unsigned ones.
            self.uint(v as u64);
        } else if v >= -32 {
            self.out.push(v as i8 as u8);
        } else if v >= -128 {
            self.out.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= -32_768 {
            let b = (v as i16).to_be_bytes();
            self.out.extend_from_slice(&[0xd1, b[0], b[1]]);
        } else if v >= -2_147_483_648 {
            let b = (v as i32).to_be_bytes();
            self.out.extend_from_slice(&[0xd2, b[0], b[1], b[2], b[3]]);
        } else {
            self.out.push(0xd3);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// The header of a value of `len` items or bytes: the "fix" form when there is one and
    /// `len` fits it, then the 8- (when there is one), 16- and 32-bit forms.
    #[inline]
    fn header(&mut self, h: &Header, len: usize) -> Result<()> {
        if len < h.fix_limit {
            self.out.push(h.fix | len as u8);
        } else if let (Some(m8), true) = (h.m8, len < 256) {
            self.out.extend_from_slice(&[m8, len as u8]);
        } else if len < 65_536 {
            let b = (len as u16).to_be_bytes();
            self.out.extend_from_slice(&[h.m16, b[0], b[1]]);
        } else {
            let l = u32::try_from(len).map_err(|_| too_long(h.what, len))?;
            let b = l.to_be_bytes();
            self.out.extend_from_slice(&[h.m32, b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    #[inline]
    fn array_header(&mut self, len: usize) -> Result<()> {
        self.header(&ARRAY, len)
    }

    #[inline]
    fn map_header(&mut self, len: usize) -> Result<()> {
        self.header(&MAP, len)
    }

    #[inline]
    fn str(&mut self, v: &str) -> Result<()> {
        self.header(&STR, v.len())?;
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    #[inline]
    fn bin(&mut self, v: &[u8]) -> Result<()> {
        self.header(&BIN, v.len())?;
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn compound(&mut self, len: Option<usize>, map: bool) -> Result<Compound<'_>> {
        match len {
            Some(n) => {
                if map {
                    self.map_header(n)?;
                } else {
                    self.array_header(n)?;
                }
                Ok(Compound::Known(Encoder {
                    out: &mut *self.out,
                }))
            }
            None => Ok(Compound::Unknown {
                parent: Encoder {
                    out: &mut *self.out,
                },
                buf: Vec::new(),
                items: 0,
                map,
            }),
        }
    }
}

/// A sequence or map under way: its header already written, or (length unknown up front) its
/// items buffered until `end` knows how many there were.
enum Compound<'a> {
    Known(Encoder<'a>),
    Unknown {
        parent: Encoder<'a>,
        buf: Vec<u8>,
        items: usize,
        map: bool,
    },
}

impl Compound<'_> {
    #[inline]
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        match self {
            Compound::Known(e) => value.serialize(e),
            Compound::Unknown { buf, items, .. } => {
                *items += 1;
                value.serialize(&mut Encoder { out: buf })
            }
        }
    }

    fn finish(self) -> Result<()> {
        if let Compound::Unknown {
            mut parent,
            buf,
            items,
            map,
        } = self
        {
            if map {
                parent.map_header(items / 2)?;
            } else {
                parent.array_header(items)?;
            }
            parent.out.extend_from_slice(&buf);
        }
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.item(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.item(key)
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.item(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

/// Writes fields one after the other, after a header written up front: tuples, structs and
/// their variants.
macro_rules! fields {
    ($($trait:ident :: $method:ident $(($key:ty))?),*) => {$(
        impl ser::$trait for Encoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, $(_key: $key,)? value: &T) -> Result<()> {
                value.serialize(&mut *self)
            }
            #[inline]
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

fields!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str)
);

/// Integer methods: widen, then write the smallest encoding (`sint` or `uint`).
macro_rules! integers {
    ($($method:ident($t:ty) => $write:ident($wide:ty)),*) => {$(
        #[inline]
        fn $method(self, v: $t) -> Result<()> {
            self.$write(<$wide>::from(v));
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &'a mut Encoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Encoder<'a>;
    type SerializeTupleStruct = Encoder<'a>;
    type SerializeTupleVariant = Encoder<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Encoder<'a>;
    type SerializeStructVariant = Encoder<'a>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.push(if v { 0xc3 } else { 0xc2 });
        Ok(())
    }

    integers!(
        serialize_i8(i8) => sint(i64),
        serialize_i16(i16) => sint(i64),
        serialize_i32(i32) => sint(i64),
        serialize_i64(i64) => sint(i64),
        serialize_u8(u8) => uint(u64),
        serialize_u16(u16) => uint(u64),
        serialize_u32(u32) => uint(u64),
        serialize_u64(u64) => uint(u64)
    );

    fn serialize_i128(self, v: i128) -> Result<()> {
        self.bin(&v.to_be_bytes())
    }

    fn serialize_u128(self, v: u128) -> Result<()> {
        self.bin(&v.to_be_bytes())
    }

    fn serialize_f32(self, v: f32) -> Result<()> {
        self.out.push(0xca);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<()> {
        self.out.push(0xcb);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<()> {
        self.str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<()> {
        self.str(v)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.bin(v)
    }

    fn serialize_none(self) -> Result<()> {
        self.out.push(0xc0);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<()> {
        self.out.push(0xc0);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.array_header(0)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<()> {
        self.str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<()> {
        if name == rmp_serde::MSGPACK_EXT_STRUCT_NAME {
            // rmp-serde's own ext type: let rmp-serde write it.
            let mut se = rmp_serde::Serializer::new(&mut *self.out);
            return ser::Serializer::serialize_newtype_struct(&mut se, name, value)
                .map_err(|e| EncodeError(e.to_string()));
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.map_header(1)?;
        self.str(variant)?;
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'a>> {
        self.compound(len, false)
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Encoder<'a>> {
        self.array_header(len)?;
        Ok(Encoder {
            out: &mut *self.out,
        })
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Encoder<'a>> {
        self.serialize_tuple(len)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Encoder<'a>> {
        self.map_header(1)?;
        self.str(variant)?;
        self.serialize_tuple(len)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a>> {
        self.compound(len, true)
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Encoder<'a>> {
        self.serialize_tuple(len)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Encoder<'a>> {
        self.serialize_tuple_variant(_name, _index, variant, len)
    }
}
