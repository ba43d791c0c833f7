//! YAML documents with positions.
//!
//! serde_norway (a maintained fork of serde_yaml, see docs/architecture.md) deserializes into typed
//! structs and reports syntax, type and unknown-key errors with a line and column. It cannot say
//! where a *value* is once deserialized, which semantic checks need ("token id 9000 >= vocab_size
//! 512" must point at that id), so the same text is also read by saphyr's marked loader into an
//! index from value path (`inputs.input_ids[1][3]`, serde's own path syntax) to position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, MarkedYaml, YamlData};
use serde::de::DeserializeOwned;

use crate::error::{Error, Pos, Result, did_you_mean};

/// Larger case files are refused before parsing: no legitimate case needs this much text.
const MAX_YAML_BYTES: u64 = 16 << 20;

pub struct Doc {
    pub file: PathBuf,
    pub text: String,
    spans: HashMap<String, Pos>,
}

impl Doc {
    pub fn read(file: &Path) -> Result<Doc> {
        let meta = std::fs::metadata(file).map_err(|e| Error::io(file, &e))?;
        if meta.len() > MAX_YAML_BYTES {
            return Err(Error::input(format!(
                "file is {} bytes, more than the {} allowed for a YAML file",
                meta.len(),
                MAX_YAML_BYTES
            ))
            .file(file)
            .hint("long inputs belong in .npy files, not inline YAML"));
        }
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, &e))?;
        Doc::from_bytes(file, bytes)
    }

    /// A document from raw bytes (must be UTF-8); `file` is only used in messages.
    pub fn from_bytes(file: &Path, bytes: Vec<u8>) -> Result<Doc> {
        if bytes.len() as u64 > MAX_YAML_BYTES {
            return Err(Error::input(format!(
                "{} bytes is more than the {MAX_YAML_BYTES} allowed for a YAML file",
                bytes.len()
            ))
            .file(file));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::input(format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()))
                .file(file)
                .hint("save the file as UTF-8")
        })?;
        Ok(Doc::from_text(file, text))
    }

    pub fn from_text(file: &Path, text: String) -> Doc {
        Doc { file: file.to_path_buf(), text, spans: HashMap::new() }
    }

    /// Deserialize the whole document; on success the position index is built.
    pub fn parse<T: DeserializeOwned>(&mut self) -> Result<T> {
        if self.text.trim().is_empty() {
            return Err(Error::input("the file is empty")
                .file(&self.file)
                .hint("see docs/cases-and-inputs.md, \"Adding a case\", for the keys a case or model spec needs"));
        }
        let value: T = serde_norway::from_str(&self.text).map_err(|e| self.serde_error(e))?;
        // serde_norway already bounded alias expansion and nesting, so this second read is safe.
        if let Ok(docs) = MarkedYaml::load_from_str(&self.text)
            && let Some(root) = docs.first()
        {
            index(root, String::new(), &mut self.spans);
        }
        Ok(value)
    }

    /// Position of the value at `path`, or of its nearest ancestor that has one.
    pub fn pos(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// An input error located at the value at `path`.
    pub fn err(&self, path: &str, msg: impl Into<String>) -> Error {
        Error::input(msg).file(&self.file).at(self.pos(path))
    }

    fn serde_error(&self, e: serde_norway::Error) -> Error {
        let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() });
        // serde_norway (and libyaml inside it) write " at line L column C" into the text; the
        // position is reported separately, once.
        let msg = strip_positions(&e.to_string());
        let (msg, hint) = humanize(&msg);
        let pos = self.better_pos(&msg).or(pos);
        let mut err = Error::input(msg).file(&self.file).at(pos);
        if let Some(h) = hint {
            err = err.hint(h);
        }
        err
    }
}

impl Doc {
    /// libyaml places some errors at the document start; find the offending line instead.
    fn better_pos(&self, msg: &str) -> Option<Pos> {
        let line_of = |pred: &dyn Fn(&str) -> bool, nth: usize| {
            self.text
                .lines()
                .enumerate()
                .filter(|(_, l)| pred(l))
                .nth(nth)
                .map(|(i, l)| Pos { line: i + 1, col: l.len() - l.trim_start().len() + 1 })
        };
        if let Some(key) = msg.strip_prefix("duplicate key `").and_then(|r| r.split('`').next()) {
            let is_key = |l: &str| {
                let t = l.trim_start().trim_start_matches("- ");
                t.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':'))
            };
            return line_of(&is_key, 1);
        }
        if msg.contains("more than one YAML document") {
            return line_of(&|l: &str| l.trim_end() == "---", usize::from(self.text.trim_start().starts_with("---")));
        }
        None
    }
}

/// Rewrite serde's messages in the project's voice, with a hint where one helps.
fn humanize(msg: &str) -> (String, Option<String>) {
    if let Some(rest) = msg_after(msg, "unknown field `") {
        let (prefix, _) = msg.split_at(msg.find("unknown field `").unwrap_or(0));
        let key = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let hint = match did_you_mean(key, expected.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None if expected.is_empty() => "this mapping takes no keys".to_string(),
            None => {
                format!("expected one of {}", expected.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
            }
        };
        return (format!("{prefix}unknown key `{key}`"), Some(hint));
    }
    if let Some(rest) = msg_after(msg, "unknown variant `") {
        let (prefix, _) = msg.split_at(msg.find("unknown variant `").unwrap_or(0));
        let val = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let hint = match did_you_mean(val, expected.iter().copied()) {
            Some(k) => format!("did you mean `{k}`?"),
            None => {
                format!("expected one of {}", expected.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
            }
        };
        return (format!("{prefix}unknown value `{val}`"), Some(hint));
    }
    if let Some(rest) = msg_after(msg, "missing field `") {
        let (prefix, _) = msg.split_at(msg.find("missing field `").unwrap_or(0));
        let key = rest.split('`').next().unwrap_or("");
        return (
            format!("{prefix}missing key `{key}`"),
            Some(format!("add `{key}:`; see docs/cases-and-inputs.md for the schema")),
        );
    }
    if msg.contains("repetition limit exceeded") || msg.contains("recursion limit exceeded") {
        return (
            format!("{msg} (the document expands to too many values)"),
            Some("YAML aliases that expand exponentially (an alias bomb) are refused".into()),
        );
    }
    if let Some(rest) = msg_after(msg, "duplicate field `").or_else(|| msg_after(msg, "duplicate entry with key \"")) {
        let key = rest.split(['`', '"']).next().unwrap_or("");
        return (format!("duplicate key `{key}`"), Some("each key may appear once per mapping".into()));
    }
    if msg.contains("more than one document") {
        return (
            "the file holds more than one YAML document".into(),
            Some("a case or model spec is one document; remove the `---` separator and what follows".into()),
        );
    }
    if let Some(i) = msg.find("expected struct ") {
        return (
            format!("{}expected a mapping of keys", &msg[..i]),
            Some("see docs/cases-and-inputs.md for the schema".into()),
        );
    }
    if msg.starts_with("invalid type") || msg.contains(": invalid type") {
        return (msg.to_string(), Some("check the value's type against the schema in docs/cases-and-inputs.md".into()));
    }
    if msg.contains("while parsing") || msg.contains("while scanning") || msg.contains("did not find expected") {
        return (
            format!("invalid YAML: {msg}"),
            Some("check brackets, quotes and indentation at this position".into()),
        );
    }
    (crate::error::lowercase_first(msg), None)
}

fn strip_positions(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " at line ".len()..];
        let skip = tail.find(" column ").map(|c| {
            let after = &tail[c + " column ".len()..];
            c + " column ".len() + after.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(after.len())
        });
        match skip {
            Some(n) => rest = &tail[n..],
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn msg_after<'a>(msg: &'a str, needle: &str) -> Option<&'a str> {
    msg.find(needle).map(|i| &msg[i + needle.len()..])
}

fn index(node: &MarkedYaml<'_>, path: String, out: &mut HashMap<String, Pos>) {
    let pos = Pos { line: node.span.start.line(), col: node.span.start.col() + 1 };
    match &node.data {
        YamlData::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                index(item, format!("{path}[{i}]"), out);
            }
        }
        YamlData::Mapping(map) => {
            for (k, v) in map.iter() {
                let key = match &k.data {
                    YamlData::Value(s) => scalar_text(s),
                    _ => continue,
                };
                let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                index(v, child, out);
            }
        }
        _ => {}
    }
    out.insert(path, pos);
}

fn scalar_text(s: &saphyr::Scalar<'_>) -> String {
    match s {
        saphyr::Scalar::String(s) => s.to_string(),
        saphyr::Scalar::Integer(i) => i.to_string(),
        saphyr::Scalar::FloatingPoint(f) => f.to_string(),
        saphyr::Scalar::Boolean(b) => b.to_string(),
        saphyr::Scalar::Null => "null".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        tolerance: f64,
        taps: Vec<Vec<u32>>,
    }

    fn doc(text: &str) -> Doc {
        Doc::from_text(Path::new("x.yaml"), text.to_string())
    }

    #[test]
    fn unknown_key_has_position_and_suggestion() {
        let err = doc("tolerence: 1\ntaps: []\n").parse::<T>().unwrap_err();
        assert_eq!(err.to_string(), "x.yaml:1:1: unknown key `tolerence` (hint: did you mean `tolerance`?)");
    }

    #[test]
    fn value_positions_are_indexed() {
        let mut d = doc("tolerance: 1\ntaps:\n  - [1, 2]\n  - [3, 44]\n");
        d.parse::<T>().unwrap();
        assert_eq!(d.pos("taps[1][1]"), Some(Pos { line: 4, col: 9 }));
        assert_eq!(d.pos("tolerance"), Some(Pos { line: 1, col: 12 }));
        // an unknown child falls back to its parent
        assert_eq!(d.pos("taps[1][7]"), Some(Pos { line: 4, col: 5 }));
    }

    #[test]
    fn libyaml_positions_are_not_repeated() {
        assert_eq!(
            strip_positions(
                "did not find expected ',' at line 4 column 1, while parsing a flow sequence at line 3 column 14"
            ),
            "did not find expected ',', while parsing a flow sequence"
        );
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
            text.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = doc(&text).parse::<serde_norway::Value>().unwrap_err();
        assert!(err.to_string().contains("alias bomb"), "{err}");
    }
}
