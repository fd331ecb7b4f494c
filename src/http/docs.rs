//! `/docs`: the OpenAPI document served at `/openapi.json`, rendered once,
//! when the router is built, as one plain HTML page: a table of contents,
//! then per tag each operation's method, path, summary, parameters, request
//! body and responses, then the schemas. The stylesheet is inline and
//! allowed by its hash; the page has no script and makes no request to any
//! other host, so it works offline and behind a strict firewall.

use std::fmt::Write as _;

use axum::{
    http::{header, HeaderValue},
    response::IntoResponse,
    routing::get,
    Router,
};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::AppState;

const STYLE: &str = "\
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem 1.5rem 4rem;color:#1b1f24}\
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2rem;margin-top:2.5rem}\
h3{margin:2rem 0 .3rem;font-size:1.05rem}code{font:13px ui-monospace,monospace;background:#f1f3f5;padding:0 .2em;border-radius:3px}\
table{border-collapse:collapse;width:100%;margin:.3rem 0 .8rem}th,td{border:1px solid #d0d7de;padding:.25rem .45rem;text-align:left;vertical-align:top}\
th{background:#f6f8fa;font-weight:600}td td,td th{font-size:.92em}\
.m{display:inline-block;min-width:3.6rem;font:700 12px ui-monospace,monospace;color:#fff;border-radius:3px;padding:.1rem .3rem;text-align:center;margin-right:.4rem}\
.get{background:#1f6feb}.post{background:#1a7f37}.patch{background:#9a6700}.put{background:#8250df}.delete{background:#cf222e}\
.op{border-top:1px solid #d0d7de}.muted{color:#57606a}.toc ul{list-style:none;padding-left:1rem}.toc li{margin:.1rem 0}\
.schemas{margin:.2rem 0 0 1rem}\
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}";

/// What the page may load: its own inline stylesheet (by hash) and nothing
/// else; no script at all.
fn csp() -> String {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'self'; style-src 'sha256-{hash}'; script-src 'none'; img-src 'self'; \
         form-action 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )
}

/// The `/docs` route, serving the page rendered from `openapi` (the JSON
/// served at `/openapi.json`). A document that does not parse, which would
/// be a bug, gives a page that says so rather than no service.
pub fn router(openapi: &str) -> Router<AppState> {
    let page = match serde_json::from_str::<Node>(openapi) {
        Ok(doc) => render(&doc),
        Err(err) => {
            tracing::error!(error = %err, "the OpenAPI document does not parse");
            format!("<!doctype html><title>API</title><p>The API reference could not be rendered: {}</p>", esc(&err.to_string()))
        }
    };
    let page = axum::body::Bytes::from(page);
    let csp =
        HeaderValue::from_str(&csp()).expect("the policy is ASCII with no control characters");
    Router::new().route(
        "/docs",
        get(move || {
            let page = page.clone();
            let csp = csp.clone();
            async move {
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/html; charset=utf-8"),
                        ),
                        (header::CONTENT_SECURITY_POLICY, csp),
                        (
                            header::X_CONTENT_TYPE_OPTIONS,
                            HeaderValue::from_static("nosniff"),
                        ),
                        (
                            header::REFERRER_POLICY,
                            HeaderValue::from_static("no-referrer"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    ],
                    page,
                )
                    .into_response()
            }
        }),
    )
}

const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// One operation of the document, in the order the page lists them.
struct Op<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a Node,
}

impl Op<'_> {
    fn anchor(&self) -> String {
        slug(&format!("op {} {}", self.method, self.path))
    }
}

/// The whole page for an OpenAPI document.
fn render(doc: &Node) -> String {
    let info = &doc["info"];
    let title = info["title"].as_str().unwrap_or("API");
    let version = info["version"].as_str().unwrap_or_default();
    let empty = Obj::default();
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .unwrap_or(&empty);
    let schemas = doc["components"]["schemas"].as_object().unwrap_or(&empty);

    // Tags in the document's order; operations under their first tag, in
    // the document's path order. Untagged ones go last.
    let mut tags: Vec<(String, String)> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["name"].as_str()?.to_owned(),
                t["description"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect();
    let mut ops: Vec<(String, Op<'_>)> = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(body) = item.get(method).filter(|o| o.is_object()) else {
                continue;
            };
            let tag = body["tags"][0].as_str().unwrap_or("other").to_owned();
            if !tags.iter().any(|(name, _)| *name == tag) {
                tags.push((tag.clone(), String::new()));
            }
            ops.push((tag, Op { method, path, body }));
        }
    }

    let mut out = String::with_capacity(128 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t} API reference</title><style>{STYLE}</style></head><body>\
         <h1>{t} API <span class=\"muted\">{v}</span></h1>{d}\
         <p class=\"muted\">The machine-readable document: <a href=\"/openapi.json\"><code>/openapi.json</code></a> (OpenAPI {o}).</p>",
        t = esc(title),
        v = esc(version),
        d = para(info["description"].as_str().unwrap_or_default()),
        o = esc(doc["openapi"].as_str().unwrap_or_default()),
    );

    if !schemes.is_empty() {
        out.push_str("<h2 id=\"authentication\">Authentication</h2><table><tr><th>name</th><th>how</th><th>description</th></tr>");
        for (name, scheme) in schemes {
            let how = match scheme["type"].as_str() {
                Some("http") => format!(
                    "<code>Authorization: {} &lt;token&gt;</code>",
                    esc(&capitalize(scheme["scheme"].as_str().unwrap_or_default()))
                ),
                Some("apiKey") => format!(
                    "{} <code>{}</code>",
                    esc(scheme["in"].as_str().unwrap_or_default()),
                    esc(scheme["name"].as_str().unwrap_or_default())
                ),
                other => esc(other.unwrap_or_default()),
            };
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{how}</td><td>{}</td></tr>",
                esc(name),
                inline(scheme["description"].as_str().unwrap_or_default())
            );
        }
        out.push_str("</table>");
    }

    out.push_str("<nav class=\"toc\"><h2 id=\"contents\">Contents</h2><ul>");
    for (tag, description) in &tags {
        let _ = write!(
            out,
            "<li><a href=\"#{}\"><b>{}</b></a> <span class=\"muted\">{}</span><ul>",
            slug(&format!("tag {tag}")),
            esc(tag),
            inline(description)
        );
        for (_, op) in ops.iter().filter(|(t, _)| t == tag) {
            let _ = write!(
                out,
                "<li><a href=\"#{}\"><span class=\"m {m}\">{M}</span><code>{}</code></a> <span class=\"muted\">{}</span></li>",
                op.anchor(),
                esc(op.path),
                inline(first_sentence(op.body["summary"].as_str().unwrap_or_default())),
                m = op.method,
                M = op.method.to_uppercase(),
            );
        }
        out.push_str("</ul></li>");
    }
    if !schemas.is_empty() {
        let links = schemas
            .keys()
            .map(|name| {
                format!(
                    "<a href=\"#{}\">{}</a>",
                    slug(&format!("schema {name}")),
                    esc(name)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            out,
            "<li><a href=\"#schemas\"><b>Schemas</b></a><p class=\"schemas\">{links}</p></li>"
        );
    }
    out.push_str("</ul></nav>");

    for (tag, description) in &tags {
        let _ = write!(
            out,
            "<h2 id=\"{}\">{}</h2>{}",
            slug(&format!("tag {tag}")),
            esc(tag),
            para(description)
        );
        for (_, op) in ops.iter().filter(|(t, _)| t == tag) {
            operation(&mut out, op);
        }
    }

    if !schemas.is_empty() {
        out.push_str("<h2 id=\"schemas\">Schemas</h2>");
        for (name, schema) in schemas {
            let _ = write!(
                out,
                "<h3 id=\"{}\">{}</h3>{}",
                slug(&format!("schema {name}")),
                esc(name),
                para(schema["description"].as_str().unwrap_or_default())
            );
            out.push_str(&schema_block(schema));
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// One operation's section.
fn operation(out: &mut String, op: &Op<'_>) {
    let body = op.body;
    let _ = write!(
        out,
        "<section class=\"op\"><h3 id=\"{}\"><span class=\"m {m}\">{M}</span><code>{}</code></h3>{}{}",
        op.anchor(),
        esc(op.path),
        para(body["summary"].as_str().unwrap_or_default()),
        para(body["description"].as_str().unwrap_or_default()),
        m = op.method,
        M = op.method.to_uppercase(),
    );

    let security = match body["security"].as_array() {
        None => "none (public)".to_owned(),
        Some(alternatives) => alternatives
            .iter()
            .map(|requirement| {
                requirement
                    .as_object()
                    .into_iter()
                    .flat_map(|r| r.keys())
                    .map(|name| {
                        format!("<a href=\"#authentication\"><code>{}</code></a>", esc(name))
                    })
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let _ = write!(out, "<p><b>Authentication:</b> {security}</p>");

    if let Some(params) = body["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<p><b>Parameters</b></p><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>");
        for p in params {
            let required = if p["required"].as_bool() == Some(true) {
                " <b>required</b>"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                esc(p["name"].as_str().unwrap_or_default()),
                esc(p["in"].as_str().unwrap_or_default()),
                type_html(&p["schema"]),
                inline(p["description"].as_str().unwrap_or_default()),
                constraints(&p["schema"], p.get("example")),
            );
        }
        out.push_str("</table>");
    }

    if let Some(request) = body["requestBody"].as_object() {
        let required = if request.get("required").and_then(Node::as_bool) == Some(true) {
            " (required)"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<p><b>Request body</b>{required}</p>{}",
            para(
                request
                    .get("description")
                    .and_then(Node::as_str)
                    .unwrap_or_default()
            )
        );
        for (content_type, media) in request
            .get("content")
            .and_then(Node::as_object)
            .into_iter()
            .flatten()
        {
            let _ = write!(
                out,
                "<p><code>{}</code>: {}</p>{}",
                esc(content_type),
                type_html(&media["schema"]),
                if media["schema"].get("$ref").is_some() {
                    String::new()
                } else {
                    schema_block(&media["schema"])
                }
            );
        }
    }

    if let Some(responses) = body["responses"].as_object() {
        out.push_str("<p><b>Responses</b></p><table><tr><th>status</th><th>description</th><th>body</th></tr>");
        for (status, response) in responses {
            let content = response["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(content_type, media)| {
                    let schema = media.get("schema").map(type_html).unwrap_or_default();
                    format!("<code>{}</code> {schema}", esc(content_type))
                })
                .collect::<Vec<_>>()
                .join("<br>");
            let headers = response["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, h)| {
                    format!(
                        "<br>header <code>{}</code> {}",
                        esc(name),
                        inline(h["description"].as_str().unwrap_or_default())
                    )
                })
                .collect::<String>();
            let _ = write!(
                out,
                "<tr><td><b>{}</b></td><td>{}{headers}</td><td>{content}</td></tr>",
                esc(status),
                inline(response["description"].as_str().unwrap_or_default()),
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

/// A schema's type in a few words: a link for a named schema, `A | B` for
/// alternatives, `array of T`, `string (date-time)`.
fn type_html(schema: &Node) -> String {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.rsplit('/').next().unwrap_or(name);
        return format!(
            "<a href=\"#{}\">{}</a>",
            slug(&format!("schema {name}")),
            esc(name)
        );
    }
    for (key, joiner) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " &amp; ")] {
        if let Some(alternatives) = schema[key].as_array() {
            return alternatives
                .iter()
                .map(type_html)
                .collect::<Vec<_>>()
                .join(joiner);
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Node::Str(t) => vec![t.as_str()],
        Node::Arr(ts) => ts.iter().filter_map(Node::as_str).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => vec!["any"],
    };
    types
        .iter()
        .map(|t| match *t {
            "array" => format!("array of {}", type_html(&schema["items"])),
            t => match schema["format"].as_str() {
                Some(format) if t != "null" => format!("{} ({})", esc(t), esc(format)),
                _ => esc(t),
            },
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A schema in full: an object's properties as a table (nested objects in
/// their row), alternatives one after another, anything else its type and
/// constraints.
fn schema_block(schema: &Node) -> String {
    if let Some(alternatives) = schema["oneOf"]
        .as_array()
        .or_else(|| schema["anyOf"].as_array())
    {
        let items: String = alternatives
            .iter()
            .map(|a| {
                format!(
                    "<li>{}{}</li>",
                    para(a["description"].as_str().unwrap_or_default()),
                    schema_block(a)
                )
            })
            .collect();
        return format!("<p>One of:</p><ol>{items}</ol>");
    }
    let Some(properties) = schema["properties"].as_object() else {
        return format!("<p>{}{}</p>", type_html(schema), constraints(schema, None));
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Node::as_str)
        .collect();
    let mut out = String::from("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
    for (name, property) in properties {
        let nested = if property.get("properties").is_some()
            || property["items"].get("properties").is_some()
        {
            schema_block(if property.get("properties").is_some() {
                property
            } else {
                &property["items"]
            })
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}{}{nested}</td></tr>",
            esc(name),
            if required.contains(&name.as_str()) {
                " <b>required</b>"
            } else {
                ""
            },
            type_html(property),
            inline(property["description"].as_str().unwrap_or_default()),
            constraints(property, None),
        );
    }
    if schema["additionalProperties"].as_bool() == Some(false) {
        out.push_str(
            "<tr><td colspan=\"3\" class=\"muted\">No other fields are accepted.</td></tr>",
        );
    }
    out.push_str("</table>");
    out
}

/// A schema's limits, allowed values, default and example, as a short
/// suffix for a description.
fn constraints(schema: &Node, example: Option<&Node>) -> String {
    let mut parts = Vec::new();
    if let Some(values) = schema["enum"].as_array() {
        parts.push(format!(
            "one of {}",
            values
                .iter()
                .map(|v| format!("<code>{}</code>", esc(&plain(v))))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (key, label) in [
        ("minimum", "at least"),
        ("maximum", "at most"),
        ("minLength", "length at least"),
        ("maxLength", "length at most"),
        ("minItems", "at least items:"),
        ("maxItems", "at most items:"),
        ("pattern", "matches"),
        ("default", "default"),
    ] {
        if let Some(v) = schema.get(key) {
            parts.push(format!("{label} <code>{}</code>", esc(&plain(v))));
        }
    }
    if let Some(v) = example
        .or_else(|| schema.get("example"))
        .or_else(|| schema["examples"].as_array().and_then(|e| e.first()))
    {
        parts.push(format!("e.g. <code>{}</code>", esc(&plain(v))));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" <span class=\"muted\">({})</span>", parts.join("; "))
    }
}

/// A summary's first sentence, for the table of contents.
fn first_sentence(text: &str) -> &str {
    let text = text.trim();
    let end = [". ", ".\n", ": ", ":\n"]
        .iter()
        .filter_map(|stop| text.find(stop))
        .min()
        .unwrap_or(text.len());
    text[..end].trim_end_matches(['.', ':'])
}

/// A JSON value as text: strings without their quotes.
fn plain(v: &Node) -> String {
    match v {
        Node::Str(s) => s.clone(),
        other => {
            let mut out = String::new();
            other.write_json(&mut out);
            out
        }
    }
}

/// Paragraphs of a description (blank lines apart).
fn para(text: &str) -> String {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", inline(p)))
        .collect()
}

/// A description's text, escaped, with its `code spans` kept as code.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, piece) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(piece));
        } else {
            out.push_str(&esc(piece));
        }
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// An HTML id: lower-case letters, digits and dashes.
fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// Text made safe for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON document that keeps its objects' keys in the order written:
/// utoipa writes paths, properties and responses in the order the code
/// declares them, and the page shows them so. (`serde_json::Value` sorts
/// keys unless a crate-wide feature changes every map in the program.)
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Node>),
    Obj(Obj),
}

/// An object's members, in order.
#[derive(Debug, Default)]
struct Obj(Vec<(String, Node)>);

static NULL: Node = Node::Null;

impl Obj {
    fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Obj {
    type Item = (&'a String, &'a Node);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Node)>,
        fn(&'a (String, Node)) -> (&'a String, &'a Node),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        self.as_object().and_then(|o| o.get(key))
    }

    fn as_object(&self) -> Option<&Obj> {
        match self {
            Node::Obj(o) => Some(o),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&Vec<Node>> {
        match self {
            Node::Arr(a) => Some(a),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Node::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_object(&self) -> bool {
        matches!(self, Node::Obj(_))
    }

    /// Compact JSON text.
    fn write_json(&self, out: &mut String) {
        match self {
            Node::Null => out.push_str("null"),
            Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Node::Num(n) => out.push_str(&n.to_string()),
            Node::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
            Node::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Node::Obj(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::from(key.as_str()).to_string());
                    out.push(':');
                    value.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

impl std::ops::Index<&str> for Node {
    type Output = Node;
    fn index(&self, key: &str) -> &Node {
        self.get(key).unwrap_or(&NULL)
    }
}

impl std::ops::Index<usize> for Node {
    type Output = Node;
    fn index(&self, i: usize) -> &Node {
        self.as_array().and_then(|a| a.get(i)).unwrap_or(&NULL)
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
                Ok(Node::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
                Ok(Node::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
                Ok(Node::Num(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Node, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Node::Null, Node::Num))
            }
            fn visit_str<E>(self, s: &str) -> Result<Node, E> {
                Ok(Node::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Node, E> {
                Ok(Node::Str(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Arr(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Node::Obj(Obj(members)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_str(&value.to_string()).unwrap()
    }

    #[test]
    fn text_from_the_document_is_escaped_and_code_spans_kept() {
        assert_eq!(
            inline("a <b> & `x<y>` \"q\""),
            "a &lt;b&gt; &amp; <code>x&lt;y&gt;</code> &quot;q&quot;"
        );
        let page = render(&node(json!({
            "openapi": "3.1.0",
            "info": {"title": "<script>alert(1)</script>", "version": "1"},
            "paths": {"/x/{id}": {"get": {
                "tags": ["t"],
                "summary": "Read <x>",
                "parameters": [{"name": "id", "in": "path", "required": true,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/X"}}}}}
            }}},
            "components": {"schemas": {"X": {"type": "object", "required": ["a"],
                "properties": {"a": {"type": ["integer", "null"], "maximum": 5}}}}}
        })));
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("id=\"op-get-x-id\""));
        assert!(page.contains("href=\"#schema-x\""));
        assert!(page.contains("integer | null"));
        assert!(page.contains("at most <code>5</code>"));
    }

    #[test]
    fn properties_keep_the_order_the_document_gives_them() {
        let doc: Node = serde_json::from_str(
            r#"{"info": {"title": "t"}, "paths": {}, "components": {"schemas": {
                "Z": {"type": "object", "properties": {"name": {"type": "string"},
                      "zones": {"type": "array"}, "admit": {"type": "integer"}}}}}}"#,
        )
        .unwrap();
        let page = render(&doc);
        let at = |field: &str| page.find(&format!("<code>{field}</code>")).unwrap();
        assert!(
            at("name") < at("zones") && at("zones") < at("admit"),
            "{page}"
        );
    }

    #[test]
    fn the_table_of_contents_shows_a_summary_s_first_sentence() {
        assert_eq!(
            first_sentence("Hold tickets. Then confirm."),
            "Hold tickets"
        );
        assert_eq!(first_sentence("Who the caller is."), "Who the caller is");
        assert_eq!(first_sentence("Log in: a token.\nMore."), "Log in");
        assert_eq!(first_sentence("v1.2 works"), "v1.2 works");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_stylesheet() {
        let policy = csp();
        assert!(policy.starts_with("default-src 'self'; style-src 'sha256-"));
        assert!(policy.contains("script-src 'none'"));
    }
}
