//! snapflow's MessagePack writer must write exactly the bytes rmp-serde writes, for every type
//! of the serde data model, so that the stored format stays rmp-serde's.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use snapflow::log::codec;

fn assert_same<T: Serialize + std::fmt::Debug + ?Sized>(value: &T) {
    let ours = codec::encode(value, "test value").expect("snapflow encodes");
    let theirs = rmp_serde::to_vec(value).expect("rmp-serde encodes");
    assert_eq!(ours, theirs, "encodings of {value:?} differ");
}

#[derive(Debug, Clone, Serialize)]
enum Shape {
    Unit,
    Newtype(i32),
    Tuple(u8, String),
    Struct { a: u64, b: Option<bool> },
}

#[derive(Debug, Clone, Serialize)]
struct UnitStruct;

#[derive(Debug, Clone, Serialize)]
struct Newtype(u16);

#[derive(Debug, Clone, Serialize)]
struct TupleStruct(i8, f32, char);

#[derive(Debug, Clone, Serialize)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    shape: Shape,
    maybe: Option<Option<i64>>,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    pair: (u32, i16),
    map: BTreeMap<String, u32>,
    unit: (),
    unit_struct: UnitStruct,
    newtype: Newtype,
    tuple_struct: TupleStruct,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<u8>,
}

/// A sequence and a map whose lengths are not known up front (the encoder must buffer).
#[derive(Debug)]
struct UnknownLength(Vec<u32>);

impl Serialize for UnknownLength {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut outer = s.serialize_seq(None)?;
        outer.serialize_element(&Odd(&self.0))?;
        outer.serialize_element(&self.0.len())?;
        outer.end()
    }
}

#[derive(Debug)]
struct Odd<'a>(&'a [u32]);

impl Serialize for Odd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for v in self.0.iter().filter(|v| *v % 2 == 1) {
            m.serialize_entry(v, &(v / 2))?;
        }
        m.end()
    }
}

/// rmp-serde's ext type, as users declare it.
#[derive(Debug, Serialize)]
#[serde(rename = "_ExtStruct")]
struct Ext((i8, serde_bytes::ByteBuf));

#[test]
fn integers_at_every_width_boundary_encode_like_rmp_serde() {
    let unsigned: [u64; 11] = [
        0,
        1,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        u64::MAX,
    ];
    for v in unsigned {
        assert_same(&v);
        if let Ok(x) = u8::try_from(v) {
            assert_same(&x);
        }
        if let Ok(x) = u16::try_from(v) {
            assert_same(&x);
        }
        if let Ok(x) = u32::try_from(v) {
            assert_same(&x);
        }
        if let Ok(x) = i64::try_from(v) {
            assert_same(&x);
        }
        assert_same(&u128::from(v));
    }
    let signed: [i64; 12] = [
        -1,
        -31,
        -32,
        -33,
        -128,
        -129,
        -32_768,
        -32_769,
        i32::MIN as i64,
        i32::MIN as i64 - 1,
        i64::MIN,
        i64::MAX,
    ];
    for v in signed {
        assert_same(&v);
        if let Ok(x) = i8::try_from(v) {
            assert_same(&x);
        }
        if let Ok(x) = i16::try_from(v) {
            assert_same(&x);
        }
        if let Ok(x) = i32::try_from(v) {
            assert_same(&x);
        }
        assert_same(&i128::from(v));
    }
}

#[test]
fn lengths_at_every_header_boundary_encode_like_rmp_serde() {
    for n in [0usize, 1, 15, 16, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
        assert_same(&"x".repeat(n));
        assert_same(serde_bytes::Bytes::new(&vec![7u8; n]));
        assert_same(&vec![1u8; n]);
        if n <= 70_000 {
            let m: BTreeMap<u32, ()> = (0..n as u32).map(|i| (i, ())).collect();
            assert_same(&m);
        }
    }
}

#[test]
fn every_serde_data_model_type_encodes_like_rmp_serde() {
    assert_same(&true);
    assert_same(&false);
    assert_same(&());
    assert_same(&UnitStruct);
    assert_same(&Newtype(65_535));
    assert_same(&TupleStruct(-5, 1.5, 'é'));
    assert_same(&'x');
    assert_same(&'\u{10FFFF}');
    assert_same(&f32::NAN);
    assert_same(&f64::NEG_INFINITY);
    assert_same(&-0.0f64);
    assert_same(&Some(3u8));
    assert_same(&None::<u8>);
    for s in [
        Shape::Unit,
        Shape::Newtype(-7),
        Shape::Tuple(200, "t".into()),
        Shape::Struct {
            a: 1 << 40,
            b: None,
        },
    ] {
        assert_same(&s);
    }
    assert_same(&UnknownLength((0..40).collect()));
    assert_same(&UnknownLength(Vec::new()));
    assert_same(&Ext((5, serde_bytes::ByteBuf::from(vec![1, 2, 3]))));
    // Types whose encoding depends on `is_human_readable`.
    assert_same(&IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_same(&IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_same(&SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_same(&std::time::Duration::from_nanos(1_234_567_891));
    let hm: HashMap<String, Vec<Shape>> = [("a".to_string(), vec![Shape::Unit])].into();
    assert_same(&hm);
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        any::<i32>().prop_map(Shape::Newtype),
        (any::<u8>(), ".{0,40}").prop_map(|(a, b)| Shape::Tuple(a, b)),
        (any::<u64>(), any::<Option<bool>>()).prop_map(|(a, b)| Shape::Struct { a, b }),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        (
            any::<u64>(),
            ".{0,300}",
            prop::collection::vec(".{0,40}", 0..20),
        ),
        (shape(), any::<Option<Option<i64>>>()),
        (
            prop::collection::vec(any::<u8>(), 0..600),
            any::<(u32, i16)>(),
            prop::collection::btree_map(".{0,10}", any::<u32>(), 0..20),
        ),
        (
            any::<u16>(),
            (any::<i8>(), any::<f32>(), any::<char>()),
            any::<Option<u8>>(),
        ),
    )
        .prop_map(
            |((id, name, tags), (shape, maybe), (blob, pair, map), (n, (a, b, c), skipped))| {
                Record {
                    id,
                    name,
                    tags,
                    shape,
                    maybe,
                    blob,
                    pair,
                    map,
                    unit: (),
                    unit_struct: UnitStruct,
                    newtype: Newtype(n),
                    tuple_struct: TupleStruct(a, b, c),
                    skipped,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_records_encode_like_rmp_serde(records in prop::collection::vec(record(), 0..5)) {
        let ours = codec::encode(&records, "records").expect("snapflow encodes");
        let theirs = rmp_serde::to_vec(&records).expect("rmp-serde encodes");
        prop_assert_eq!(ours, theirs);
    }

    #[test]
    fn random_keyed_state_maps_encode_like_rmp_serde(
        map in prop::collection::hash_map(any::<u64>(), any::<(u64, i64)>(), 0..300),
    ) {
        let ours = codec::encode(&map, "map").expect("snapflow encodes");
        let theirs = rmp_serde::to_vec(&map).expect("rmp-serde encodes");
        prop_assert_eq!(ours, theirs);
    }
}
