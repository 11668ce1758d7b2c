//! A gRPC answer straight from protobuf to JSON, read field by field against its descriptor,
//! without building a `DynamicMessage` first: the answer of every gRPC step is converted, and
//! the message in between cost as much as the conversion.
//!
//! The JSON is the one prost-reflect writes (proto field names, fields without presence
//! written with their defaults, 64-bit integers as strings, bytes as base64, enums by name).
//! What this reader does not take on, it hands back as [`Unsupported`], and the caller converts
//! through a `DynamicMessage`, which decides: a malformed answer (and its error), a singular
//! message field or oneof sent twice (protobuf merges those), groups, extensions, messages
//! nested past [`MAX_DEPTH`]. Well-known types (`google.protobuf.*`), whose JSON has its own
//! shapes, are converted through a `DynamicMessage` where they appear.

use base64::Engine as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

/// Deeper messages are left to prost-reflect, which applies its own recursion limit.
const MAX_DEPTH: usize = 64;

/// This reader does not convert the answer; prost-reflect will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsupported;

/// How prost-reflect writes answers; the reader writes the same.
fn options() -> SerializeOptions {
    SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false)
}

/// The JSON of the message `desc` encoded in `bytes`.
pub(crate) fn to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Value, Unsupported> {
    if is_well_known(desc) {
        return Err(Unsupported);
    }
    message(desc, bytes, 0).map(Value::Object)
}

/// Why prost-reflect could not convert an answer.
#[derive(Debug)]
pub(crate) enum ViaMessageError {
    /// The bytes are not an encoding of the message.
    Decode(prost::DecodeError),
    /// The message has no JSON (an `Any` of a type the descriptors do not know).
    Serialize(serde_json::Error),
}

/// The JSON of `bytes` as prost-reflect converts it, for what [`to_json`] does not take on.
pub(crate) fn to_json_via_message(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Value, ViaMessageError> {
    let message = DynamicMessage::decode(desc.clone(), bytes).map_err(ViaMessageError::Decode)?;
    message.serialize_with_options(serde_json::value::Serializer, &options()).map_err(ViaMessageError::Serialize)
}

fn is_well_known(desc: &MessageDescriptor) -> bool {
    desc.full_name().starts_with("google.protobuf.")
}

/// The wire types of protobuf.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// Reads the wire format; every shortfall is [`Unsupported`], for prost-reflect to name.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn varint(&mut self) -> Result<u64, Unsupported> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.0.split_first().ok_or(Unsupported)?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte may carry one bit only.
                return if i == 9 && byte > 1 { Err(Unsupported) } else { Ok(value) };
            }
        }
        Err(Unsupported)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Unsupported> {
        if n > self.0.len() {
            return Err(Unsupported);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn fixed32(&mut self) -> Result<u32, Unsupported> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Unsupported)?))
    }

    fn fixed64(&mut self) -> Result<u64, Unsupported> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Unsupported)?))
    }

    fn delimited(&mut self) -> Result<&'a [u8], Unsupported> {
        let len = usize::try_from(self.varint()?).map_err(|_| Unsupported)?;
        self.take(len)
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), Unsupported> {
        let key = u32::try_from(self.varint()?).map_err(|_| Unsupported)?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        if number == 0 {
            return Err(Unsupported);
        }
        Ok((number, wire))
    }

    fn skip(&mut self, wire: u8) -> Result<(), Unsupported> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            DELIMITED => self.delimited().map(drop),
            FIXED32 => self.take(4).map(drop),
            // Groups, and wire types protobuf does not have.
            _ => Err(Unsupported),
        }
    }
}

/// A field's value so far: the last for a singular field, every element for a list or map.
enum Slot {
    One(Value),
    List(Vec<Value>),
    Map(Map<String, Value>),
}

fn message(desc: &MessageDescriptor, bytes: &[u8], depth: usize) -> Result<Map<String, Value>, Unsupported> {
    if depth > MAX_DEPTH {
        return Err(Unsupported);
    }
    let mut reader = Reader(bytes);
    // By field number; messages are small, so a scan beats a map.
    let mut slots: Vec<(u32, Slot)> = Vec::new();
    while !reader.is_empty() {
        let (number, wire) = reader.key()?;
        let Some(field) = desc.get_field(number) else {
            if desc.get_extension(number).is_some() {
                return Err(Unsupported);
            }
            // Unknown fields are not written.
            reader.skip(wire)?;
            continue;
        };
        if field.is_group() {
            return Err(Unsupported);
        }
        let slot = slots.iter().position(|(n, _)| *n == number);
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { return Err(Unsupported) };
            if wire != DELIMITED {
                return Err(Unsupported);
            }
            let (key, value) = map_entry(&entry, reader.delimited()?, depth + 1)?;
            match slot {
                Some(i) => match &mut slots[i].1 {
                    Slot::Map(map) => {
                        map.insert(key, value);
                    }
                    _ => return Err(Unsupported),
                },
                None => slots.push((number, Slot::Map(Map::from_iter([(key, value)])))),
            }
        } else if field.is_list() {
            let i = match slot {
                Some(i) => i,
                None => {
                    slots.push((number, Slot::List(Vec::new())));
                    slots.len() - 1
                }
            };
            let Slot::List(list) = &mut slots[i].1 else { return Err(Unsupported) };
            let kind = field.kind();
            if wire == DELIMITED && packable(&kind) {
                let mut packed = Reader(reader.delimited()?);
                while !packed.is_empty() {
                    list.push(scalar(&kind, scalar_wire(&kind), &mut packed)?);
                }
            } else {
                list.push(value(&kind, wire, &mut reader, depth)?);
            }
        } else {
            let kind = field.kind();
            if let Some(i) = slot {
                // A message sent twice is merged, not replaced.
                if matches!(kind, Kind::Message(_)) {
                    return Err(Unsupported);
                }
                slots[i].1 = Slot::One(value(&kind, wire, &mut reader, depth)?);
            } else {
                if let Some(oneof) = field.containing_oneof() {
                    // Another member of the oneof clears this one's sibling.
                    let sibling_set = oneof
                        .fields()
                        .any(|member| member.number() != number && slots.iter().any(|(n, _)| *n == member.number()));
                    if sibling_set {
                        return Err(Unsupported);
                    }
                }
                slots.push((number, Slot::One(value(&kind, wire, &mut reader, depth)?)));
            }
        }
    }
    let mut json = Map::new();
    for field in desc.fields() {
        let found = slots.iter().position(|(n, _)| *n == field.number()).map(|i| slots.swap_remove(i).1);
        let value = match found {
            Some(Slot::One(value)) => value,
            Some(Slot::List(list)) => Value::Array(list),
            Some(Slot::Map(map)) => Value::Object(map),
            None if field.supports_presence() => continue,
            None if field.is_map() => Value::Object(Map::new()),
            None if field.is_list() => Value::Array(Vec::new()),
            None => default(&field)?,
        };
        json.insert(field.name().to_owned(), value);
    }
    Ok(json)
}

/// One entry of a map field: its key as JSON writes map keys, and its value.
fn map_entry(entry: &MessageDescriptor, bytes: &[u8], depth: usize) -> Result<(String, Value), Unsupported> {
    let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
    let (key_kind, value_kind) = (key_field.kind(), value_field.kind());
    let mut reader = Reader(bytes);
    let (mut key, mut value) = (None, None);
    while !reader.is_empty() {
        let (number, wire) = reader.key()?;
        if number == key_field.number() {
            key = Some(scalar(&key_kind, wire, &mut reader)?);
        } else if number == value_field.number() {
            if value.is_some() && matches!(value_kind, Kind::Message(_)) {
                return Err(Unsupported);
            }
            value = Some(self::value(&value_kind, wire, &mut reader, depth)?);
        } else {
            reader.skip(wire)?;
        }
    }
    let key = match key {
        Some(Value::String(text)) => text,
        Some(Value::Bool(flag)) => flag.to_string(),
        Some(Value::Number(number)) => number.to_string(),
        // 64-bit keys are strings already.
        Some(_) => return Err(Unsupported),
        None => match key_field.default_value().into_map_key() {
            Some(MapKey::String(text)) => text,
            Some(MapKey::Bool(flag)) => flag.to_string(),
            Some(MapKey::I32(n)) => n.to_string(),
            Some(MapKey::I64(n)) => n.to_string(),
            Some(MapKey::U32(n)) => n.to_string(),
            Some(MapKey::U64(n)) => n.to_string(),
            None => return Err(Unsupported),
        },
    };
    let value = match value {
        Some(value) => value,
        None => match &value_kind {
            Kind::Message(desc) => message_value(desc, &[], depth + 1)?,
            _ => default(&value_field)?,
        },
    };
    Ok((key, value))
}

/// A value of `kind` sent with wire type `wire`.
fn value(kind: &Kind, wire: u8, reader: &mut Reader<'_>, depth: usize) -> Result<Value, Unsupported> {
    match kind {
        Kind::Message(desc) => {
            if wire != DELIMITED {
                return Err(Unsupported);
            }
            message_value(desc, reader.delimited()?, depth + 1)
        }
        _ => scalar(kind, wire, reader),
    }
}

/// A message as JSON: well-known types through prost-reflect, for their own shapes.
fn message_value(desc: &MessageDescriptor, bytes: &[u8], depth: usize) -> Result<Value, Unsupported> {
    if is_well_known(desc) {
        return to_json_via_message(desc, bytes).map_err(|_| Unsupported);
    }
    message(desc, bytes, depth).map(Value::Object)
}

/// Whether a list of `kind` may come packed.
fn packable(kind: &Kind) -> bool {
    !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_))
}

/// The wire type a scalar of `kind` is sent with.
fn scalar_wire(kind: &Kind) -> u8 {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => FIXED64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => FIXED32,
        Kind::String | Kind::Bytes | Kind::Message(_) => DELIMITED,
        _ => VARINT,
    }
}

/// A scalar (or enum) of `kind`.
fn scalar(kind: &Kind, wire: u8, reader: &mut Reader<'_>) -> Result<Value, Unsupported> {
    if wire != scalar_wire(kind) {
        return Err(Unsupported);
    }
    // Truncations below are protobuf's own: an int32 is sent as a 64-bit varint.
    Ok(match kind {
        Kind::Int32 => Value::from(reader.varint()? as i32),
        Kind::Int64 => Value::String((reader.varint()? as i64).to_string()),
        Kind::Uint32 => Value::from(reader.varint()? as u32),
        Kind::Uint64 => Value::String(reader.varint()?.to_string()),
        Kind::Sint32 => {
            let n = reader.varint()? as u32;
            Value::from(((n >> 1) as i32) ^ -((n & 1) as i32))
        }
        Kind::Sint64 => {
            let n = reader.varint()?;
            Value::String((((n >> 1) as i64) ^ -((n & 1) as i64)).to_string())
        }
        Kind::Bool => Value::Bool(reader.varint()? != 0),
        Kind::Enum(desc) => {
            let number = reader.varint()? as i32;
            enum_json(desc, number)
        }
        Kind::Fixed32 => Value::from(reader.fixed32()?),
        Kind::Sfixed32 => Value::from(reader.fixed32()? as i32),
        Kind::Float => {
            let x = f32::from_bits(reader.fixed32()?);
            float(f64::from(x), Value::from(x))
        }
        Kind::Fixed64 => Value::String(reader.fixed64()?.to_string()),
        Kind::Sfixed64 => Value::String((reader.fixed64()? as i64).to_string()),
        Kind::Double => {
            let x = f64::from_bits(reader.fixed64()?);
            float(x, Value::from(x))
        }
        Kind::String => Value::String(std::str::from_utf8(reader.delimited()?).map_err(|_| Unsupported)?.to_owned()),
        Kind::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(reader.delimited()?)),
        Kind::Message(_) => return Err(Unsupported),
    })
}

/// A float as JSON: finite as a number, the rest as protobuf's JSON names them.
fn float(x: f64, finite: Value) -> Value {
    if x.is_finite() {
        finite
    } else if x.is_nan() {
        Value::String("NaN".to_owned())
    } else if x > 0.0 {
        Value::String("Infinity".to_owned())
    } else {
        Value::String("-Infinity".to_owned())
    }
}

fn enum_json(desc: &prost_reflect::EnumDescriptor, number: i32) -> Value {
    if desc.full_name() == "google.protobuf.NullValue" {
        return Value::Null;
    }
    match desc.get_value(number) {
        Some(value) => Value::String(value.name().to_owned()),
        None => Value::from(number),
    }
}

/// The JSON of an absent field without presence: its default.
fn default(field: &FieldDescriptor) -> Result<Value, Unsupported> {
    use prost_reflect::Value as V;
    Ok(match (field.default_value(), field.kind()) {
        (V::Bool(flag), _) => Value::Bool(flag),
        (V::I32(n), _) => Value::from(n),
        (V::U32(n), _) => Value::from(n),
        (V::I64(n), _) => Value::String(n.to_string()),
        (V::U64(n), _) => Value::String(n.to_string()),
        (V::F32(x), _) => float(f64::from(x), Value::from(x)),
        (V::F64(x), _) => float(x, Value::from(x)),
        (V::String(text), _) => Value::String(text),
        (V::Bytes(bytes), _) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        (V::EnumNumber(number), Kind::Enum(desc)) => enum_json(&desc, number),
        _ => return Err(Unsupported),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message as _;
    use prost_reflect::{DescriptorPool, MapKey, Value as V};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    use super::*;

    fn pool() -> DescriptorPool {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        protox::Compiler::new([dir])
            .and_then(|mut compiler| {
                compiler.include_imports(true).open_file("json_types.proto").map(|c| c.descriptor_pool())
            })
            .expect("the test proto compiles")
    }

    fn everything() -> MessageDescriptor {
        pool().get_message_by_name("baton.test.Everything").expect("the message is defined")
    }

    /// A message with a random subset of its fields set to random values, at most one member
    /// of each oneof.
    fn random_message(desc: &MessageDescriptor, rng: &mut SmallRng, depth: usize) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        if depth > 3 {
            return message;
        }
        for field in desc.fields() {
            if rng.random_bool(0.4) {
                continue;
            }
            if let Some(oneof) = field.containing_oneof()
                && oneof.fields().any(|member| message.has_field(&member))
            {
                continue;
            }
            let value = if field.is_map() {
                let Kind::Message(entry) = field.kind() else { unreachable!("a map entry") };
                let (key_kind, value_kind) = (entry.map_entry_key_field().kind(), entry.map_entry_value_field().kind());
                let entries: HashMap<MapKey, V> = (0..rng.random_range(0..4))
                    .map(|_| (random_key(&key_kind, rng), random_value(&value_kind, rng, depth)))
                    .collect();
                V::Map(entries)
            } else if field.is_list() {
                V::List((0..rng.random_range(0..4)).map(|_| random_value(&field.kind(), rng, depth)).collect())
            } else {
                random_value(&field.kind(), rng, depth)
            };
            message.set_field(&field, value);
        }
        message
    }

    fn random_key(kind: &Kind, rng: &mut SmallRng) -> MapKey {
        match random_value(kind, rng, 0) {
            V::Bool(flag) => MapKey::Bool(flag),
            V::I32(n) => MapKey::I32(n),
            V::I64(n) => MapKey::I64(n),
            V::U32(n) => MapKey::U32(n),
            V::U64(n) => MapKey::U64(n),
            V::String(text) => MapKey::String(text),
            other => unreachable!("not a map key: {other:?}"),
        }
    }

    fn random_value(kind: &Kind, rng: &mut SmallRng, depth: usize) -> V {
        let pick = rng.random_range(0..6);
        let float = [0.0, -0.0, 1.5, -2.25, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300];
        match kind {
            Kind::Double => V::F64(if pick < 4 { float[rng.random_range(0..float.len())] } else { rng.random() }),
            Kind::Float => V::F32(if pick < 4 { float[rng.random_range(0..float.len())] as f32 } else { rng.random() }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => V::I32([0, -1, 1, i32::MIN, i32::MAX, rng.random()][pick]),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => V::I64([0, -1, 1, i64::MIN, i64::MAX, rng.random()][pick]),
            Kind::Uint32 | Kind::Fixed32 => V::U32([0, 1, 127, 128, u32::MAX, rng.random()][pick]),
            Kind::Uint64 | Kind::Fixed64 => V::U64([0, 1, 127, 128, u64::MAX, rng.random()][pick]),
            Kind::Bool => V::Bool(rng.random()),
            Kind::String => V::String(["", "a", "héllo", "\u{1F600}", "with \"quotes\"", "x y z"][pick].to_owned()),
            Kind::Bytes => V::Bytes((0..pick * 2).map(|_| rng.random::<u8>()).collect::<Vec<_>>().into()),
            // 7 is not a value of the enum: it is written as its number.
            Kind::Enum(_) => V::EnumNumber([0, 1, 2, 7, 0, 1][pick]),
            Kind::Message(desc) => V::Message(match desc.full_name() {
                // Within the range that has a JSON form.
                "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
                    let mut message = DynamicMessage::new(desc.clone());
                    message.set_field_by_name("seconds", V::I64(rng.random_range(0..4_000_000_000)));
                    message.set_field_by_name("nanos", V::I32(rng.random_range(0..1_000_000_000)));
                    message
                }
                _ => random_message(desc, rng, depth + 1),
            }),
        }
    }

    /// What prost-reflect makes of `bytes`.
    fn reference(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Value, String> {
        to_json_via_message(desc, bytes).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn random_answers_read_as_prost_reflect_reads_them() {
        let desc = everything();
        let mut rng = SmallRng::seed_from_u64(20);
        for round in 0..2_000 {
            let bytes = random_message(&desc, &mut rng, 0).encode_to_vec();
            let expected = reference(&desc, &bytes);
            match (to_json(&desc, &bytes), expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "round {round}"),
                // The reader takes on every message prost-reflect can write.
                (Err(Unsupported), Ok(expected)) => panic!("round {round}: not read, prost-reflect wrote {expected}"),
                (_, Err(_)) => {}
            }
        }
    }

    #[test]
    fn merged_and_damaged_answers_are_read_alike_or_left_to_prost_reflect() {
        let desc = everything();
        let mut rng = SmallRng::seed_from_u64(2020);
        let (mut read, mut left) = (0, 0);
        for round in 0..2_000 {
            // Concatenated encodings are one message, merged: last scalar wins, lists append.
            let mut bytes = random_message(&desc, &mut rng, 0).encode_to_vec();
            let mut second = random_message(&desc, &mut rng, 0);
            if round % 4 < 2 {
                // Without what protobuf merges rather than replaces, so the reader takes more on.
                for field in desc.fields() {
                    let merged = !field.is_list() && matches!(field.kind(), Kind::Message(_));
                    if merged || field.containing_oneof().is_some_and(|oneof| oneof.fields().len() > 1) {
                        second.clear_field(&field);
                    }
                }
            }
            bytes.extend(second.encode_to_vec());
            if round % 2 == 1 && !bytes.is_empty() {
                match rng.random_range(0..3) {
                    0 => bytes.truncate(rng.random_range(0..bytes.len())),
                    1 => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    _ => bytes.insert(rng.random_range(0..bytes.len()), rng.random()),
                }
            }
            match (to_json(&desc, &bytes), reference(&desc, &bytes)) {
                (Ok(got), Ok(expected)) => {
                    assert_eq!(got, expected, "round {round}");
                    read += 1;
                }
                (Ok(got), Err(e)) => panic!("round {round}: read as {got}, but prost-reflect fails: {e}"),
                (Err(Unsupported), _) => left += 1,
            }
        }
        // Both ways are taken.
        assert!(read > 100 && left > 100, "read {read}, left {left}");
    }

    #[test]
    fn answers_carry_defaults_and_protobuf_json_shapes() {
        let desc = everything();
        let mut message = DynamicMessage::new(desc.clone());
        message.set_field_by_name("f_int64", V::I64(-5));
        message.set_field_by_name("f_bytes", V::Bytes(b"hi".to_vec().into()));
        message.set_field_by_name("f_enum", V::EnumNumber(2));
        message.set_field_by_name("f_float", V::F32(f32::NAN));
        message.set_field_by_name("o_number", V::I32(0));
        let json = to_json(&desc, &message.encode_to_vec()).expect("a plain message is read");
        assert_eq!(json["f_int64"], json!("-5"));
        assert_eq!(json["f_bytes"], json!("aGk="));
        assert_eq!(json["f_enum"], json!("GREEN"));
        assert_eq!(json["f_float"], json!("NaN"));
        // Without presence: written with their defaults; with presence: only when sent.
        assert_eq!((json["f_uint64"].clone(), json["f_string"].clone()), (json!("0"), json!("")));
        assert_eq!((json["r_int32"].clone(), json["m_message"].clone()), (json!([]), json!({})));
        assert_eq!(json["o_number"], json!(0));
        assert!(json.get("f_message").is_none() && json.get("f_optional").is_none() && json.get("o_text").is_none());
    }

    #[test]
    fn a_well_known_answer_is_left_to_prost_reflect() {
        let desc = pool().get_message_by_name("google.protobuf.Timestamp").expect("imported");
        assert_eq!(to_json(&desc, &[]), Err(Unsupported));
        assert_eq!(reference(&desc, &[]), Ok(json!("1970-01-01T00:00:00Z")));
    }
}
