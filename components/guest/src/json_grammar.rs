//! Constrained decoding for JSON: a byte-level pushdown automaton over a compiled [`Schema`] that says
//! whether a token's bytes may come next, so sampling only ever picks tokens that keep the output a
//! valid prefix of a JSON text matching the schema.
//!
//! `anyOf` is handled by running alternatives side by side (a set of stacks), dropped as bytes rule
//! them out. Whitespace between tokens is limited to one byte at a time so a model cannot loop on
//! indentation; numbers are limited in length for the same reason.

use std::sync::Arc;

use crate::json_schema::{ANY, FREE_ARRAY, FREE_OBJECT, KEYWORDS, Node, NodeId, ROOT, Schema};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectState {
    /// After `{`: a key or `}`.
    Open,
    /// After the key of property `index` (`FREE_KEY` in a free-form object): `:`.
    AfterKey(u16),
    /// After a value: `,` or `}`.
    AfterValue,
    /// After `,`: a key.
    AfterComma,
}

const FREE_KEY: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberState {
    Sign,
    Zero,
    Int,
    Dot,
    Fraction,
    Exponent,
    ExponentSign,
    ExponentDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of this node comes next.
    Value(NodeId),
    Object {
        node: NodeId,
        state: ObjectState,
        /// Index of the first declared property that may still come.
        next: u16,
    },
    /// Reading a declared property name: `candidate` is a property whose name begins with the `len`
    /// bytes read so far.
    Key {
        node: NodeId,
        candidate: u16,
        len: u16,
    },
    Array {
        node: NodeId,
        count: u32,
        open: bool,
    },
    String {
        node: NodeId,
        chars: u32,
        /// 0 outside an escape, 1 after `\`, 2-5 inside `\uXXXX`.
        escape: u8,
        /// Continuation bytes still owed by a multi-byte UTF-8 character.
        utf8: u8,
    },
    Number {
        state: NumberState,
        integer: bool,
        digits: u8,
    },
    /// Matching one of a literal node's texts: `candidate` begins with the `len` bytes read so far.
    Literal {
        node: NodeId,
        candidate: u16,
        len: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Thread {
    frames: Vec<Frame>,
    /// Whitespace bytes in a row outside strings.
    whitespace: u8,
}

const MAX_WHITESPACE: u8 = 1;
const MAX_DIGITS: u8 = 16;
const MAX_NESTING: usize = 64;
/// `anyOf` chains (recursive `$ref`s) are followed this far without consuming a byte.
const MAX_FORKS: u32 = 32;

/// Where a JSON output stands against its schema. A clone shares the schema (checking a token against a
/// framed grammar clones it, for each candidate token of each step).
#[derive(Debug, Clone)]
pub struct JsonGrammar {
    schema: Arc<Schema>,
    threads: Vec<Thread>,
}

impl JsonGrammar {
    pub fn new(schema: Schema) -> Self {
        Self {
            schema: Arc::new(schema),
            threads: vec![Thread {
                frames: vec![Frame::Value(ROOT)],
                whitespace: 0,
            }],
        }
    }

    /// Whether `bytes` may come next.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && !self.feed(bytes).is_empty()
    }

    /// Consumes `bytes`; returns false (and keeps the state) if they may not come next.
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        let threads = self.feed(bytes);
        if threads.is_empty() {
            return false;
        }
        self.threads = threads;
        true
    }

    /// The JSON value is complete: nothing more may follow.
    pub fn is_complete(&self) -> bool {
        self.threads.iter().all(|t| t.frames.is_empty())
    }

    /// The output may end here (a complete value, or a top-level number or literal that could go on).
    pub fn can_end(&self) -> bool {
        self.threads.iter().any(|t| match t.frames.as_slice() {
            [] => true,
            [frame] => self.may_end(frame),
            _ => false,
        })
    }

    fn feed(&self, bytes: &[u8]) -> Vec<Thread> {
        let mut threads = self.threads.clone();
        let mut next = Vec::with_capacity(threads.len());
        for &b in bytes {
            for thread in threads.drain(..) {
                self.step(thread, b, 0, &mut next);
            }
            next.dedup();
            std::mem::swap(&mut threads, &mut next);
            if threads.is_empty() {
                break;
            }
        }
        threads
    }

    fn properties(&self, node: NodeId) -> &[(String, NodeId, bool)] {
        match self.schema.node(node) {
            Node::Object { properties, .. } => properties,
            _ => &[],
        }
    }

    fn literal(&self, node: NodeId) -> &[Vec<u8>] {
        match self.schema.node(node) {
            Node::Literal(options) => options,
            _ => &[],
        }
    }

    /// Declared properties that may come next: from `next` up to the first required one.
    fn key_range(&self, node: NodeId, next: u16) -> std::ops::Range<usize> {
        let properties = self.properties(node);
        let start = next as usize;
        let end = properties[start..]
            .iter()
            .position(|(_, _, required)| *required)
            .map_or(properties.len(), |i| start + i + 1);
        start..end
    }

    /// Whether `}` may close the object (no required property is left).
    fn may_close(&self, node: NodeId, next: u16) -> bool {
        self.properties(node)[next as usize..]
            .iter()
            .all(|(_, _, required)| !required)
    }

    fn may_end(&self, frame: &Frame) -> bool {
        match *frame {
            Frame::Number { state, .. } => matches!(
                state,
                NumberState::Zero
                    | NumberState::Int
                    | NumberState::Fraction
                    | NumberState::ExponentDigits
            ),
            Frame::Literal {
                node,
                candidate,
                len,
            } => self.literal(node)[candidate as usize].len() == len as usize,
            _ => false,
        }
    }

    fn step(&self, mut thread: Thread, b: u8, forks: u32, out: &mut Vec<Thread>) {
        let Some(&top) = thread.frames.last() else {
            return; // the value is complete: nothing may follow
        };
        let whitespace = matches!(b, b' ' | b'\n' | b'\t' | b'\r');
        let structural = matches!(
            top,
            Frame::Value(_) | Frame::Object { .. } | Frame::Array { .. }
        );
        if structural && whitespace {
            if thread.whitespace < MAX_WHITESPACE {
                thread.whitespace += 1;
                out.push(thread);
            }
            return;
        }
        if structural {
            thread.whitespace = 0;
        }
        let replace = |thread: &mut Thread, frame: Frame| {
            *thread.frames.last_mut().expect("a frame") = frame;
        };
        match top {
            Frame::Value(node) => {
                let frame = match self.schema.node(node) {
                    Node::AnyOf(alternatives) => {
                        if forks < MAX_FORKS {
                            for &alternative in alternatives {
                                let mut fork = thread.clone();
                                replace(&mut fork, Frame::Value(alternative));
                                self.step(fork, b, forks + 1, out);
                            }
                        }
                        return;
                    }
                    Node::Any => {
                        let node = match b {
                            b'{' => FREE_OBJECT,
                            b'[' => FREE_ARRAY,
                            b't' | b'f' | b'n' => KEYWORDS,
                            _ => {
                                return self.start_scalar(thread, b, ANY, false, out);
                            }
                        };
                        replace(&mut thread, Frame::Value(node));
                        return self.step(thread, b, forks + 1, out);
                    }
                    Node::Object { .. } if b == b'{' => {
                        if thread.frames.len() >= MAX_NESTING {
                            return;
                        }
                        Frame::Object {
                            node,
                            state: ObjectState::Open,
                            next: 0,
                        }
                    }
                    Node::Array { .. } if b == b'[' => {
                        if thread.frames.len() >= MAX_NESTING {
                            return;
                        }
                        Frame::Array {
                            node,
                            count: 0,
                            open: true,
                        }
                    }
                    Node::String { .. } => return self.start_scalar(thread, b, node, false, out),
                    Node::Number { integer } => {
                        return self.start_scalar(thread, b, node, *integer, out);
                    }
                    Node::Literal(options) => {
                        let Some(candidate) = options.iter().position(|o| o.first() == Some(&b))
                        else {
                            return;
                        };
                        let frame = Frame::Literal {
                            node,
                            candidate: candidate as u16,
                            len: 1,
                        };
                        replace(&mut thread, frame);
                        self.settle_literal(&mut thread);
                        return out.push(thread);
                    }
                    _ => return,
                };
                replace(&mut thread, frame);
                out.push(thread);
            }
            Frame::Object { node, state, next } => {
                let free = matches!(self.schema.node(node), Node::Object { free: true, .. });
                match (state, b) {
                    (ObjectState::Open | ObjectState::AfterValue, b'}')
                        if free || self.may_close(node, next) =>
                    {
                        thread.frames.pop();
                    }
                    (ObjectState::Open | ObjectState::AfterComma, b'"') => {
                        if free {
                            replace(
                                &mut thread,
                                Frame::Object {
                                    node,
                                    state: ObjectState::AfterKey(FREE_KEY),
                                    next,
                                },
                            );
                            thread.frames.push(Frame::String {
                                node: ANY,
                                chars: 0,
                                escape: 0,
                                utf8: 0,
                            });
                        } else {
                            let range = self.key_range(node, next);
                            if range.is_empty() {
                                return;
                            }
                            thread.frames.push(Frame::Key {
                                node,
                                candidate: range.start as u16,
                                len: 0,
                            });
                        }
                    }
                    (ObjectState::AfterKey(index), b':') => {
                        let (value, next) = match index {
                            FREE_KEY => (ANY, next),
                            i => (self.properties(node)[i as usize].1, i + 1),
                        };
                        replace(
                            &mut thread,
                            Frame::Object {
                                node,
                                state: ObjectState::AfterValue,
                                next,
                            },
                        );
                        thread.frames.push(Frame::Value(value));
                    }
                    (ObjectState::AfterValue, b',')
                        if free || (next as usize) < self.properties(node).len() =>
                    {
                        replace(
                            &mut thread,
                            Frame::Object {
                                node,
                                state: ObjectState::AfterComma,
                                next,
                            },
                        );
                    }
                    _ => return,
                }
                out.push(thread);
            }
            Frame::Key {
                node,
                candidate,
                len,
            } => {
                let properties = self.properties(node);
                let Some(parent) = thread.frames.len().checked_sub(2) else {
                    return;
                };
                let Frame::Object { next, .. } = thread.frames[parent] else {
                    return;
                };
                let read = &properties[candidate as usize].0.as_bytes()[..len as usize];
                let range = self.key_range(node, next);
                let matching = |extra: Option<u8>| {
                    range.clone().find(|&i| {
                        let name = properties[i].0.as_bytes();
                        match extra {
                            None => name == read,
                            Some(b) => {
                                name.len() > read.len()
                                    && name.starts_with(read)
                                    && name[read.len()] == b
                            }
                        }
                    })
                };
                if b == b'"' {
                    let Some(index) = matching(None) else { return };
                    thread.frames.pop();
                    thread.frames[parent] = Frame::Object {
                        node,
                        state: ObjectState::AfterKey(index as u16),
                        next,
                    };
                } else {
                    let Some(index) = matching(Some(b)) else {
                        return;
                    };
                    replace(
                        &mut thread,
                        Frame::Key {
                            node,
                            candidate: index as u16,
                            len: len + 1,
                        },
                    );
                }
                out.push(thread);
            }
            Frame::Array { node, count, open } => {
                let Node::Array {
                    items,
                    min_items,
                    max_items,
                } = *self.schema.node(node)
                else {
                    return;
                };
                let room = max_items.is_none_or(|max| count < max);
                match b {
                    b']' if count >= min_items => {
                        thread.frames.pop();
                        out.push(thread);
                    }
                    // `,` starts the next item; the first item starts with its own first byte.
                    _ if room && (open || b == b',') => {
                        replace(
                            &mut thread,
                            Frame::Array {
                                node,
                                count: count + 1,
                                open: false,
                            },
                        );
                        thread.frames.push(Frame::Value(items));
                        if open {
                            self.step(thread, b, forks, out);
                        } else {
                            out.push(thread);
                        }
                    }
                    _ => {}
                }
            }
            Frame::String {
                node,
                chars,
                escape,
                utf8,
            } => {
                let (min, max) = match *self.schema.node(node) {
                    Node::String {
                        min_length,
                        max_length,
                    } => (min_length, max_length.unwrap_or(u32::MAX)),
                    _ => (0, u32::MAX),
                };
                let (mut chars, mut escape, mut utf8) = (chars, escape, utf8);
                if utf8 > 0 {
                    if !(0x80..=0xBF).contains(&b) {
                        return;
                    }
                    utf8 -= 1;
                } else if escape == 1 {
                    escape = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 0,
                        b'u' => 2,
                        _ => return,
                    };
                } else if escape >= 2 {
                    if !b.is_ascii_hexdigit() {
                        return;
                    }
                    escape = if escape == 5 { 0 } else { escape + 1 };
                } else if b == b'"' {
                    if chars < min {
                        return;
                    }
                    thread.frames.pop();
                    return out.push(thread);
                } else {
                    if chars >= max || b < 0x20 {
                        return;
                    }
                    chars += 1;
                    match b {
                        b'\\' => escape = 1,
                        0x00..=0x7F => {}
                        0xC2..=0xDF => utf8 = 1,
                        0xE0..=0xEF => utf8 = 2,
                        0xF0..=0xF4 => utf8 = 3,
                        _ => return,
                    }
                }
                replace(
                    &mut thread,
                    Frame::String {
                        node,
                        chars,
                        escape,
                        utf8,
                    },
                );
                out.push(thread);
            }
            Frame::Number {
                state,
                integer,
                digits,
            } => {
                let digit = b.is_ascii_digit();
                let next = match (state, b) {
                    (NumberState::Sign, b'0') => Some(NumberState::Zero),
                    (NumberState::Sign, _) if digit => Some(NumberState::Int),
                    (NumberState::Int, _) if digit => Some(NumberState::Int),
                    (NumberState::Zero | NumberState::Int, b'.') if !integer => {
                        Some(NumberState::Dot)
                    }
                    (NumberState::Dot | NumberState::Fraction, _) if digit => {
                        Some(NumberState::Fraction)
                    }
                    (NumberState::Zero | NumberState::Int | NumberState::Fraction, b'e' | b'E')
                        if !integer =>
                    {
                        Some(NumberState::Exponent)
                    }
                    (NumberState::Exponent, b'+' | b'-') => Some(NumberState::ExponentSign),
                    (
                        NumberState::Exponent
                        | NumberState::ExponentSign
                        | NumberState::ExponentDigits,
                        _,
                    ) if digit => Some(NumberState::ExponentDigits),
                    _ => None,
                };
                match next {
                    Some(state) if !digit || digits < MAX_DIGITS => {
                        let digits = digits + u8::from(digit);
                        replace(
                            &mut thread,
                            Frame::Number {
                                state,
                                integer,
                                digits,
                            },
                        );
                        out.push(thread);
                    }
                    Some(_) => {}
                    None if self.may_end(&top) => {
                        thread.frames.pop();
                        self.step(thread, b, forks, out);
                    }
                    None => {}
                }
            }
            Frame::Literal {
                node,
                candidate,
                len,
            } => {
                let options = self.literal(node);
                let read = &options[candidate as usize][..len as usize];
                let extended = options.iter().position(|o| {
                    o.len() > read.len() && o.starts_with(read) && o[read.len()] == b
                });
                match extended {
                    Some(index) => {
                        replace(
                            &mut thread,
                            Frame::Literal {
                                node,
                                candidate: index as u16,
                                len: len + 1,
                            },
                        );
                        self.settle_literal(&mut thread);
                        out.push(thread);
                    }
                    None if self.may_end(&top) => {
                        thread.frames.pop();
                        self.step(thread, b, forks, out);
                    }
                    None => {}
                }
            }
        }
    }

    /// Starts a string or a number with its first byte.
    fn start_scalar(
        &self,
        mut thread: Thread,
        b: u8,
        node: NodeId,
        integer: bool,
        out: &mut Vec<Thread>,
    ) {
        let string = matches!(self.schema.node(node), Node::String { .. } | Node::Any);
        let number = matches!(self.schema.node(node), Node::Number { .. } | Node::Any);
        let frame = match b {
            b'"' if string => Frame::String {
                node,
                chars: 0,
                escape: 0,
                utf8: 0,
            },
            b'-' if number => Frame::Number {
                state: NumberState::Sign,
                integer,
                digits: 0,
            },
            b'0'..=b'9' if number => Frame::Number {
                state: if b == b'0' {
                    NumberState::Zero
                } else {
                    NumberState::Int
                },
                integer,
                digits: 1,
            },
            _ => return,
        };
        *thread.frames.last_mut().expect("a frame") = frame;
        out.push(thread);
    }

    /// A literal matched in full that nothing longer extends is finished at once, so an output whose
    /// value is a literal completes without waiting for the next byte.
    fn settle_literal(&self, thread: &mut Thread) {
        let Some(&Frame::Literal {
            node,
            candidate,
            len,
        }) = thread.frames.last()
        else {
            return;
        };
        let options = self.literal(node);
        let read = &options[candidate as usize][..len as usize];
        let complete = options[candidate as usize].len() == len as usize;
        let extendable = options
            .iter()
            .any(|o| o.len() > read.len() && o.starts_with(read));
        if complete && !extendable {
            thread.frames.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grammar(schema: serde_json::Value) -> JsonGrammar {
        JsonGrammar::new(Schema::compile(&schema).unwrap())
    }

    fn accepts_whole(g: &JsonGrammar, text: &str) -> bool {
        let mut g = g.clone();
        g.advance(text.as_bytes()) && g.can_end()
    }

    #[test]
    fn free_json_accepts_valid_and_rejects_invalid() {
        let g = JsonGrammar::new(Schema::any_object());
        for ok in [
            r#"{}"#,
            r#"{"a": [1, -2.5e3, "x\n\u00e9", true, null, {"b": false}]}"#,
            "{\"é\": \"日本\"}",
        ] {
            assert!(accepts_whole(&g, ok), "{ok}");
        }
        for bad in [
            r#"[1]"#,
            r#"{"a" 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": tru}"#,
            "{\"a\":\n\n 1}",
            r#"{}}"#,
        ] {
            assert!(!accepts_whole(&g, bad), "{bad}");
        }
    }

    #[test]
    fn schema_holds_keys_types_and_required() {
        let g = grammar(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "kind": {"type": ["string", "null"]}
            },
            "required": ["name", "tags"]
        }));
        assert!(accepts_whole(
            &g,
            r#"{"name": "Ann", "age": 42, "tags": ["a"], "kind": null}"#
        ));
        assert!(accepts_whole(&g, r#"{"name":"Ann","tags":[]}"#));
        for bad in [
            r#"{"tags": [], "name": "Ann"}"#,
            r#"{"name": "Ann"}"#,
            r#"{"name": "Annabel", "tags": []}"#,
            r#"{"name": "Ann", "age": 4.5, "tags": []}"#,
            r#"{"name": "Ann", "tags": ["c"]}"#,
            r#"{"name": "Ann", "tags": ["a", "b", "a"]}"#,
            r#"{"name": "Ann", "extra": 1, "tags": []}"#,
        ] {
            assert!(!accepts_whole(&g, bad), "{bad}");
        }
    }

    #[test]
    fn completion_and_ending() {
        let mut g = grammar(json!({"type": "object", "properties": {"ok": {"type": "boolean"}}}));
        assert!(g.advance(br#"{"ok": tr"#));
        assert!(!g.is_complete() && !g.can_end());
        assert!(!g.accepts(b"ue}x"), "nothing may follow the value");
        assert!(g.advance(b"ue}"));
        assert!(g.is_complete() && g.can_end());

        let mut n = grammar(json!({"type": "integer"}));
        assert!(n.advance(b"12"));
        assert!(n.can_end() && !n.is_complete(), "a number may go on");
        assert!(!n.accepts(b"."));
        let long = "1".repeat(40);
        assert!(!n.accepts(long.as_bytes()), "numbers are bounded");
    }

    #[test]
    fn whitespace_runs_and_anyof_tool_calls() {
        let g = JsonGrammar::new(Schema::any_object());
        assert!(!g.accepts(b"{    "));
        let tools = grammar(json!({"anyOf": [
            {"type": "object", "properties": {"name": {"const": "get_weather"},
                "arguments": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
             "required": ["name", "arguments"]},
            {"type": "object", "properties": {"name": {"const": "get_time"},
                "arguments": {"type": "object", "properties": {}}},
             "required": ["name", "arguments"]}
        ]}));
        assert!(accepts_whole(
            &tools,
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#
        ));
        assert!(accepts_whole(
            &tools,
            r#"{"name": "get_time", "arguments": {}}"#
        ));
        assert!(!accepts_whole(
            &tools,
            r#"{"name": "get_time", "arguments": {"city": "Paris"}}"#
        ));
        assert!(!accepts_whole(
            &tools,
            r#"{"name": "get_weather", "arguments": {}}"#
        ));
        assert!(!tools.accepts(br#"{"name": "get_x"#));
    }
}
