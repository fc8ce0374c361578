//! JSON Schema, compiled into the small set of value shapes constrained decoding can enforce byte by
//! byte (see `json_grammar`).
//!
//! The supported subset is the one OpenAI's structured outputs document: `type` (one or a list),
//! `properties` + `required`, `items` + `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf`,
//! `minLength`/`maxLength`, `$ref` into `$defs`/`definitions`. Keywords that constrain values in ways a
//! byte grammar cannot (`pattern`, `format`, numeric bounds) are refused rather than silently ignored, so
//! an output never claims to match a schema it was not held to. Objects with declared properties get
//! exactly those (in declaration order, optional ones skippable); objects without are free-form.

use serde_json::{Map, Value};

/// Index of a node in [`Schema::nodes`].
pub type NodeId = u32;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Any JSON value.
    Any,
    Object {
        /// Declared properties in order, with whether each is required.
        properties: Vec<(String, NodeId, bool)>,
        /// No properties are declared: any keys, any values.
        free: bool,
    },
    Array {
        items: NodeId,
        min_items: u32,
        max_items: Option<u32>,
    },
    String {
        min_length: u32,
        max_length: Option<u32>,
    },
    Number {
        integer: bool,
    },
    /// One of these exact JSON texts (`enum`, `const`, booleans, `null`).
    Literal(Vec<Vec<u8>>),
    AnyOf(Vec<NodeId>),
}

/// A compiled schema: its nodes, the root first.
#[derive(Debug, Clone)]
pub struct Schema {
    pub nodes: Vec<Node>,
}

/// Nodes every schema holds first, for the parts of a value `Any` leaves open.
pub const ANY: NodeId = 0;
pub const FREE_OBJECT: NodeId = 1;
pub const FREE_ARRAY: NodeId = 2;
pub const KEYWORDS: NodeId = 3;
pub const ROOT: NodeId = 4;

fn builtin_nodes() -> Vec<Node> {
    vec![
        Node::Any,
        Node::Object {
            properties: Vec::new(),
            free: true,
        },
        Node::Array {
            items: ANY,
            min_items: 0,
            max_items: None,
        },
        Node::Literal(vec![b"true".to_vec(), b"false".to_vec(), b"null".to_vec()]),
    ]
}

impl Schema {
    /// A schema any JSON object matches (`response_format: json_object`).
    pub fn any_object() -> Self {
        let mut nodes = builtin_nodes();
        nodes.push(nodes[FREE_OBJECT as usize].clone());
        Self { nodes }
    }

    pub fn compile(schema: &Value) -> Result<Self, String> {
        let mut compiler = Compiler {
            root: schema,
            nodes: builtin_nodes(),
            refs: Vec::new(),
        };
        compiler.node(schema, 0)?;
        Ok(Self {
            nodes: compiler.nodes,
        })
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    /// `$ref` targets already compiled (or being compiled, for recursive schemas).
    refs: Vec<(String, NodeId)>,
}

/// Deep enough for any real schema, shallow enough that a hostile one cannot exhaust the stack.
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 4096;

const REFUSED: &[&str] = &[
    "pattern",
    "patternProperties",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "allOf",
    "not",
    "if",
    "uniqueItems",
    "contains",
    "prefixItems",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
];

impl Compiler<'_> {
    fn reserve(&mut self) -> Result<NodeId, String> {
        if self.nodes.len() >= MAX_NODES + ROOT as usize {
            return Err(format!("the schema is larger than {MAX_NODES} nodes"));
        }
        self.nodes.push(Node::Any);
        Ok(self.nodes.len() as NodeId - 1)
    }

    fn node(&mut self, schema: &Value, depth: usize) -> Result<NodeId, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the schema nests deeper than {MAX_DEPTH} levels"));
        }
        let id = self.reserve()?;
        let node = match schema {
            Value::Bool(true) => Node::Any,
            Value::Object(map) => self.object_schema(map, depth)?,
            other => return Err(format!("a schema must be an object, not {other}")),
        };
        self.nodes[id as usize] = node;
        Ok(id)
    }

    fn object_schema(&mut self, map: &Map<String, Value>, depth: usize) -> Result<Node, String> {
        if let Some(keyword) = REFUSED.iter().find(|k| map.contains_key(**k)) {
            return Err(format!(
                "the schema keyword `{keyword}` is not supported by constrained decoding"
            ));
        }
        if let Some(reference) = map.get("$ref") {
            let reference = reference.as_str().ok_or("`$ref` must be a string")?;
            return Ok(Node::AnyOf(vec![self.reference(reference, depth)?]));
        }
        if let Some(value) = map.get("const") {
            return Ok(Node::Literal(vec![json_text(value)]));
        }
        if let Some(values) = map.get("enum") {
            let values = values.as_array().ok_or("`enum` must be an array")?;
            if values.is_empty() {
                return Err("`enum` must not be empty".into());
            }
            return Ok(Node::Literal(values.iter().map(json_text).collect()));
        }
        for keyword in ["anyOf", "oneOf"] {
            if let Some(alternatives) = map.get(keyword) {
                let alternatives = alternatives
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or(format!("`{keyword}` must be a non-empty array"))?;
                let ids = alternatives
                    .iter()
                    .map(|a| self.node(a, depth + 1))
                    .collect::<Result<_, _>>()?;
                return Ok(Node::AnyOf(ids));
            }
        }
        match map.get("type") {
            None if map.contains_key("properties") => self.typed("object", map, depth),
            None => Ok(Node::Any),
            Some(Value::String(ty)) => self.typed(ty, map, depth),
            Some(Value::Array(types)) => {
                let mut ids = Vec::with_capacity(types.len());
                for ty in types {
                    let ty = ty.as_str().ok_or("`type` lists must hold strings")?;
                    let node = self.typed(ty, map, depth)?;
                    let id = self.reserve()?;
                    self.nodes[id as usize] = node;
                    ids.push(id);
                }
                if ids.is_empty() {
                    return Err("`type` must not be an empty list".into());
                }
                Ok(Node::AnyOf(ids))
            }
            Some(other) => Err(format!("`type` must be a string or a list, not {other}")),
        }
    }

    fn typed(&mut self, ty: &str, map: &Map<String, Value>, depth: usize) -> Result<Node, String> {
        let count = |key: &str| -> Result<Option<u32>, String> {
            map.get(key)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or(format!("`{key}` must be a non-negative integer"))
                })
                .transpose()
        };
        Ok(match ty {
            "object" => {
                let required: Vec<&str> = match map.get("required") {
                    None => Vec::new(),
                    Some(Value::Array(names)) => names
                        .iter()
                        .map(|n| n.as_str().ok_or("`required` must list strings"))
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err("`required` must be an array".into()),
                };
                let mut properties = Vec::new();
                if let Some(declared) = map.get("properties") {
                    let declared = declared
                        .as_object()
                        .ok_or("`properties` must be an object")?;
                    for (name, schema) in declared {
                        let id = self.node(schema, depth + 1)?;
                        properties.push((name.clone(), id, required.contains(&name.as_str())));
                    }
                }
                if let Some(missing) = required
                    .iter()
                    .find(|r| !properties.iter().any(|(name, ..)| name == *r))
                {
                    return Err(format!(
                        "`required` names `{missing}`, which is not a property"
                    ));
                }
                let free = !map.contains_key("properties")
                    && map.get("additionalProperties") != Some(&Value::Bool(false));
                Node::Object { properties, free }
            }
            "array" => {
                let items = match map.get("items") {
                    Some(items) => self.node(items, depth + 1)?,
                    None => {
                        let id = self.reserve()?;
                        self.nodes[id as usize] = Node::Any;
                        id
                    }
                };
                let (min_items, max_items) = (count("minItems")?.unwrap_or(0), count("maxItems")?);
                if max_items.is_some_and(|max| max < min_items) {
                    return Err("`maxItems` is below `minItems`".into());
                }
                Node::Array {
                    items,
                    min_items,
                    max_items,
                }
            }
            "string" => {
                let (min_length, max_length) =
                    (count("minLength")?.unwrap_or(0), count("maxLength")?);
                if max_length.is_some_and(|max| max < min_length) {
                    return Err("`maxLength` is below `minLength`".into());
                }
                Node::String {
                    min_length,
                    max_length,
                }
            }
            "number" => Node::Number { integer: false },
            "integer" => Node::Number { integer: true },
            "boolean" => Node::Literal(vec![b"true".to_vec(), b"false".to_vec()]),
            "null" => Node::Literal(vec![b"null".to_vec()]),
            other => return Err(format!("unknown schema type `{other}`")),
        })
    }

    fn reference(&mut self, reference: &str, depth: usize) -> Result<NodeId, String> {
        if let Some(&(_, target)) = self.refs.iter().find(|(r, _)| r == reference) {
            return Ok(target);
        }
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| self.root.pointer(pointer))
            .ok_or(format!(
                "`$ref` {reference:?} does not point into this schema"
            ))?;
        // Recursive schemas refer to themselves: register before compiling.
        let target_id = self.reserve()?;
        self.refs.push((reference.to_string(), target_id));
        let compiled = self.node(target, depth + 1)?;
        self.nodes[target_id as usize] = Node::AnyOf(vec![compiled]);
        Ok(target_id)
    }
}

fn json_text(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_objects_with_required_properties_in_order() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name"]
        }))
        .unwrap();
        let Node::Object { properties, .. } = schema.node(ROOT) else {
            panic!("{schema:?}")
        };
        let names: Vec<_> = properties
            .iter()
            .map(|(n, _, r)| (n.as_str(), *r))
            .collect();
        assert_eq!(names, [("name", true), ("age", false)]);
    }

    #[test]
    fn refuses_what_a_byte_grammar_cannot_enforce() {
        for schema in [
            json!({"type": "string", "pattern": "^a+$"}),
            json!({"type": "integer", "minimum": 3}),
            json!({"type": "object", "required": ["x"]}),
            json!({"type": "wat"}),
            json!("string"),
            json!({"enum": []}),
        ] {
            assert!(Schema::compile(&schema).is_err(), "{schema}");
        }
    }

    #[test]
    fn references_and_recursion_compile() {
        let schema = json!({
            "$defs": {"node": {"type": "object", "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
            }, "required": ["value", "children"]}},
            "$ref": "#/$defs/node"
        });
        assert!(Schema::compile(&schema).is_ok());
        let deep = (0..100).fold(
            json!({"type": "string"}),
            |s, _| json!({"type": "array", "items": s}),
        );
        assert!(Schema::compile(&deep).is_err());
    }
}
