//! Fast mode on ONNX Runtime, chosen at load time: every `MatMulNBits` node of the model set to
//! `accuracy_level` 4 (int8 activations per block, ONNX Runtime's integer kernels), so one export serves
//! both precision modes.
//!
//! ONNX models are protobuf. A `ModelProto` holds its `GraphProto` in field 7, a graph its `NodeProto`s in
//! field 1, a node its `op_type` in field 4 and its `AttributeProto`s in field 5, an attribute its `name`
//! in field 1, its integer in field 3 and its type in field 20. Only the model, the graph and the
//! `MatMulNBits` nodes are re-encoded; every other field (initializers, which hold the weights, included)
//! is copied as it lies.

use crate::backend::BackendError;

/// `AttributeProto.AttributeType.INT`.
const INT_ATTRIBUTE: u64 = 2;

/// `model` with every `MatMulNBits` node's `accuracy_level` set to `level`, and how many nodes it has.
pub(super) fn with_accuracy_level(
    model: &[u8],
    level: u64,
) -> Result<(Vec<u8>, usize), BackendError> {
    let mut nodes = 0;
    let model = rewrite_fields(model, 7, |graph| {
        rewrite_fields(graph, 1, |node| {
            if !is_matmul_nbits(node)? {
                return Ok(None);
            }
            nodes += 1;
            rewrite_node(node, level).map(Some)
        })
        .map(Some)
    })?;
    Ok((model, nodes))
}

/// `message` with each length-delimited field `number` passed through `rewrite`, which returns the
/// field's new contents, or `None` to keep it as it is; every other field is copied as it lies.
fn rewrite_fields(
    message: &[u8],
    number: u64,
    mut rewrite: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, BackendError>,
) -> Result<Vec<u8>, BackendError> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for field in fields(message) {
        let field = field?;
        let rewritten = match field.payload {
            Payload::Bytes(contents) if field.number == number => rewrite(contents)?,
            _ => None,
        };
        match rewritten {
            Some(contents) => put_bytes(&mut out, number, &contents),
            None => out.extend_from_slice(field.raw),
        }
    }
    Ok(out)
}

fn is_matmul_nbits(node: &[u8]) -> Result<bool, BackendError> {
    for field in fields(node) {
        if let Field {
            number: 4,
            payload: Payload::Bytes(op_type),
            ..
        } = field?
        {
            return Ok(op_type == b"MatMulNBits");
        }
    }
    Ok(false)
}

/// The node without its `accuracy_level` attribute, then with one of `level`.
fn rewrite_node(node: &[u8], level: u64) -> Result<Vec<u8>, BackendError> {
    let mut out = Vec::with_capacity(node.len() + 32);
    for field in fields(node) {
        let field = field?;
        let replaced = match field.payload {
            Payload::Bytes(attribute) if field.number == 5 => {
                attribute_name(attribute)? == b"accuracy_level"
            }
            _ => false,
        };
        if !replaced {
            out.extend_from_slice(field.raw);
        }
    }
    let mut attribute = Vec::new();
    put_bytes(&mut attribute, 1, b"accuracy_level");
    put_varint_field(&mut attribute, 3, level);
    put_varint_field(&mut attribute, 20, INT_ATTRIBUTE);
    put_bytes(&mut out, 5, &attribute);
    Ok(out)
}

fn attribute_name(attribute: &[u8]) -> Result<&[u8], BackendError> {
    for field in fields(attribute) {
        if let Field {
            number: 1,
            payload: Payload::Bytes(name),
            ..
        } = field?
        {
            return Ok(name);
        }
    }
    Ok(b"")
}

/// One field of a protobuf message: its number, its value, and all its bytes (key included).
struct Field<'a> {
    number: u64,
    payload: Payload<'a>,
    raw: &'a [u8],
}

enum Payload<'a> {
    /// A length-delimited field's contents: a string, bytes or a nested message.
    Bytes(&'a [u8]),
    /// A varint or fixed-size scalar; never looked into.
    Scalar,
}

fn fields(message: &[u8]) -> impl Iterator<Item = Result<Field<'_>, BackendError>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        (at < message.len()).then(|| {
            let start = at;
            let key = varint(message, &mut at)?;
            let payload = match key & 7 {
                0 => varint(message, &mut at).map(|_| Payload::Scalar)?,
                1 => skip(message, &mut at, 8).map(|_| Payload::Scalar)?,
                5 => skip(message, &mut at, 4).map(|_| Payload::Scalar)?,
                2 => {
                    let length = varint(message, &mut at)? as usize;
                    let from = at;
                    skip(message, &mut at, length)?;
                    Payload::Bytes(&message[from..at])
                }
                other => return Err(malformed(format!("wire type {other}"))),
            };
            Ok(Field {
                number: key >> 3,
                payload,
                raw: &message[start..at],
            })
        })
    })
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, BackendError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or_else(|| malformed("a truncated varint".into()))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("a varint longer than 10 bytes".into()))
}

fn skip(bytes: &[u8], at: &mut usize, length: usize) -> Result<(), BackendError> {
    match at.checked_add(length).filter(|&end| end <= bytes.len()) {
        Some(end) => {
            *at = end;
            Ok(())
        }
        None => Err(malformed(
            "a field running past the end of its message".into(),
        )),
    }
}

fn malformed(what: String) -> BackendError {
    BackendError::Load(format!("the model is not valid ONNX protobuf: {what}"))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    put_varint(out, number << 3);
    put_varint(out, value);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op_type: &str, accuracy_level: Option<u64>) -> Vec<u8> {
        let mut node = Vec::new();
        put_bytes(&mut node, 1, b"x");
        put_bytes(&mut node, 4, op_type.as_bytes());
        let mut bits = Vec::new();
        put_bytes(&mut bits, 1, b"bits");
        put_varint_field(&mut bits, 3, 4);
        put_bytes(&mut node, 5, &bits);
        if let Some(level) = accuracy_level {
            let mut attribute = Vec::new();
            put_bytes(&mut attribute, 1, b"accuracy_level");
            put_varint_field(&mut attribute, 3, level);
            put_bytes(&mut node, 5, &attribute);
        }
        node
    }

    /// `(op_type, accuracy_level)` of every node of `model`.
    fn levels(model: &[u8]) -> Vec<(String, Option<u64>)> {
        let graph = fields(model)
            .map(Result::unwrap)
            .find_map(|f| match f.payload {
                Payload::Bytes(graph) if f.number == 7 => Some(graph),
                _ => None,
            })
            .unwrap();
        let mut found = Vec::new();
        for field in fields(graph).map(Result::unwrap) {
            let Payload::Bytes(node) = field.payload else {
                continue;
            };
            if field.number != 1 {
                continue;
            }
            let (mut op, mut level) = (String::new(), None);
            for f in fields(node).map(Result::unwrap) {
                match (f.number, f.payload) {
                    (4, Payload::Bytes(name)) => op = String::from_utf8(name.to_vec()).unwrap(),
                    (5, Payload::Bytes(attribute))
                        if attribute_name(attribute).unwrap() == b"accuracy_level" =>
                    {
                        let value = fields(attribute)
                            .map(Result::unwrap)
                            .find(|a| a.number == 3)
                            .unwrap();
                        let mut at = 1;
                        level = Some(varint(value.raw, &mut at).unwrap());
                    }
                    _ => {}
                }
            }
            found.push((op, level));
        }
        found
    }

    #[test]
    fn every_matmul_nbits_gets_the_level_and_nothing_else_changes() {
        let mut graph = Vec::new();
        put_bytes(&mut graph, 1, &node("MatMulNBits", Some(0)));
        put_bytes(&mut graph, 1, &node("Add", None));
        put_bytes(&mut graph, 1, &node("MatMulNBits", None));
        // An initializer (field 5 of the graph) with a fixed32 inside and 300 bytes of data.
        let mut initializer = vec![0x0d, 1, 2, 3, 4];
        put_bytes(&mut initializer, 9, &[7; 300]);
        put_bytes(&mut graph, 5, &initializer);
        let mut model = Vec::new();
        put_varint_field(&mut model, 1, 10);
        put_bytes(&mut model, 7, &graph);
        put_bytes(&mut model, 14, b"producer");

        let (fast, nodes) = with_accuracy_level(&model, 4).unwrap();
        assert_eq!(nodes, 2);
        assert_eq!(
            levels(&fast),
            [
                ("MatMulNBits".into(), Some(4)),
                ("Add".into(), None),
                ("MatMulNBits".into(), Some(4))
            ]
        );
        let copied = |bytes: &[u8]| fast.windows(bytes.len()).any(|w| w == bytes);
        assert!(copied(&initializer) && copied(b"producer"));
        let (back, _) = with_accuracy_level(&fast, 0).unwrap();
        assert_eq!(levels(&back)[0], ("MatMulNBits".into(), Some(0)));
    }

    #[test]
    fn malformed_models_are_refused_not_read_past() {
        let mut model = Vec::new();
        put_bytes(&mut model, 7, &node("MatMulNBits", Some(0)));
        let truncated = with_accuracy_level(&model[..model.len() - 1], 4).unwrap_err();
        assert!(
            truncated.to_string().contains("past the end"),
            "{truncated}"
        );
        let group = with_accuracy_level(&[0x0b], 4).unwrap_err();
        assert!(group.to_string().contains("wire type 3"), "{group}");
        let endless = with_accuracy_level(&[0x08, 0xff], 4).unwrap_err();
        assert!(
            endless.to_string().contains("truncated varint"),
            "{endless}"
        );
    }
}
