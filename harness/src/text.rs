//! Text inputs: `inputs: {text: ...}` tokenized by the harness with the model's `tokenizer.json`
//! (the `tokenizers` crate). HF's tokenizer writes the goldens `tokenizer.input_ids`,
//! `tokenizer.attention_mask` and `tokenizer.token_type_ids`; crate::tokenization compares them
//! first, exactly. The model runs on the harness's own tokenization either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::case::IdMatrix;
use crate::error::{Error, Result};

/// The tokenizer goldens, in the order they are compared (before any activation).
pub const TOKENIZER_TAPS: [&str; 3] = ["tokenizer.input_ids", "tokenizer.attention_mask", "tokenizer.token_type_ids"];

/// `inputs.text`: one string, a batch of strings, or a batch of `[first, second]` pairs.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    One(String),
    Batch(Vec<String>),
    Pairs(Vec<(String, String)>),
}

impl Text {
    pub fn len(&self) -> usize {
        match self {
            Text::One(_) => 1,
            Text::Batch(b) => b.len(),
            Text::Pairs(p) => p.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The strings of row `i` (one, or two for a pair).
    pub fn row(&self, i: usize) -> Vec<&str> {
        match self {
            Text::One(s) => vec![s.as_str()],
            Text::Batch(b) => vec![b[i].as_str()],
            Text::Pairs(p) => vec![p[i].0.as_str(), p[i].1.as_str()],
        }
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Hand-written (not `untagged`) so a bad element gets serde's path and position.
        enum Item {
            One(String),
            Pair(String, String),
        }
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Item;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string or a pair of strings `[first, second]`")
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Item, E> {
                        Ok(Item::One(v.to_string()))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> std::result::Result<Item, A::Error> {
                        let a: String = s.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                        let b: String = s.next_element()?.ok_or_else(|| serde::de::Error::invalid_length(1, &self))?;
                        if s.next_element::<serde::de::IgnoredAny>()?.is_some() {
                            return Err(serde::de::Error::custom("a pair has exactly two strings `[first, second]`"));
                        }
                        Ok(Item::Pair(a, b))
                    }
                }
                d.deserialize_any(V)
            }
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, a list of strings, or a list of pairs `[first, second]`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Text, E> {
                Ok(Text::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> std::result::Result<Text, A::Error> {
                let mut items = Vec::new();
                while let Some(i) = s.next_element::<Item>()? {
                    items.push(i);
                }
                let pairs = items.iter().filter(|i| matches!(i, Item::Pair(..))).count();
                if pairs == 0 {
                    Ok(Text::Batch(
                        items.into_iter().map(|i| if let Item::One(s) = i { s } else { unreachable!() }).collect(),
                    ))
                } else if pairs == items.len() {
                    Ok(Text::Pairs(
                        items
                            .into_iter()
                            .map(|i| if let Item::Pair(a, b) = i { (a, b) } else { unreachable!() })
                            .collect(),
                    ))
                } else {
                    Err(serde::de::Error::custom(
                        "mixes strings and pairs: give every row as a string, or every row as `[first, second]`",
                    ))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `inputs.tokenizer`: the arguments of HF's `tokenizer(text, ...)` a case can set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerOptions {
    /// Add `[CLS]`/`[SEP]` (or the model's template). Default true.
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    /// `longest` (default) pads every row to the longest; `max_length` pads to `max_length`.
    #[serde(default)]
    pub padding: Padding,
    /// Truncate (longest first, for pairs) to `max_length`. Default false.
    #[serde(default)]
    pub truncation: bool,
    /// Default: the model's max length (see [`TextTokenizer::model_max_length`]).
    #[serde(default)]
    pub max_length: Option<usize>,
}

fn yes() -> bool {
    true
}

impl Default for TokenizerOptions {
    fn default() -> Self {
        TokenizerOptions { add_special_tokens: true, padding: Padding::Longest, truncation: false, max_length: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    #[default]
    Longest,
    MaxLength,
}

/// The harness's tokenization of a case's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub input_ids: IdMatrix,
    pub attention_mask: IdMatrix,
    pub token_type_ids: IdMatrix,
}

/// A model's `tokenizer.json`, with the settings HF's tokenizer takes from the files around it.
pub struct TextTokenizer {
    tk: Tokenizer,
    pub file: PathBuf,
    pad_token: Option<String>,
    pad_left: bool,
    /// The model's max length and where it comes from (for messages).
    pub model_max: Option<(usize, String)>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer({})", self.file.display())
    }
}

/// A text case: its tokenizer and the harness's tokenization.
#[derive(Debug, Clone)]
pub struct TextCase {
    pub tokenizer: Arc<TextTokenizer>,
    pub encoded: Encoded,
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// A special token as tokenizer_config.json / special_tokens_map.json write it: a string or
/// `{"content": ...}`.
fn token_str(v: &Value) -> Option<String> {
    v.as_str().map(String::from).or_else(|| v.get("content")?.as_str().map(String::from))
}

impl TextTokenizer {
    /// Load `dir/tokenizer.json`, and from `tokenizer_config.json`, `special_tokens_map.json` and
    /// `sentence_bert_config.json` the pad token, padding side and max length.
    pub fn load(dir: &Path) -> Result<TextTokenizer> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::input(format!(
                "`text` needs the model's tokenizer.json, and {} does not exist",
                crate::error::display_path(&file)
            ))
            .file(&file)
            .hint("give `input_ids` instead, or use a checkpoint that ships a tokenizer.json"));
        }
        let tk = Tokenizer::from_file(&file).map_err(|e| {
            Error::input(format!("cannot read tokenizer.json: {}", crate::error::lowercase_first(&e.to_string())))
                .file(&file)
        })?;
        let cfg = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Value::Null);
        let map = read_json(&dir.join("special_tokens_map.json")).unwrap_or(Value::Null);
        let pad_token = cfg
            .get("pad_token")
            .and_then(token_str)
            .or_else(|| map.get("pad_token").and_then(token_str))
            .or_else(|| tk.get_padding().map(|p| p.pad_token.clone()));
        let pad_left = cfg.get("padding_side").and_then(Value::as_str) == Some("left");
        // sentence-transformers truncates at max_seq_length; HF's tokenizer at model_max_length
        // (a huge placeholder when the model has none).
        let st = read_json(&dir.join("sentence_bert_config.json"))
            .and_then(|v| v.get("max_seq_length")?.as_u64())
            .map(|n| (n as usize, "max_seq_length in sentence_bert_config.json".to_string()));
        let hf = cfg
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|n| (1.0..1e9).contains(n))
            .map(|n| (n as usize, "model_max_length in tokenizer_config.json".to_string()));
        Ok(TextTokenizer { tk, file, pad_token, pad_left, model_max: st.or(hf) })
    }

    /// The token string of an id (`[UNK]`-like `<id N>` when the vocabulary has none).
    pub fn token(&self, id: i64) -> String {
        u32::try_from(id).ok().and_then(|i| self.tk.id_to_token(i)).unwrap_or_else(|| format!("<id {id}>"))
    }

    /// Tokenize as HF's `tokenizer(text, padding=..., truncation=..., max_length=...,
    /// add_special_tokens=...)`, overriding whatever padding and truncation tokenizer.json holds.
    /// Errors are messages about the case's `inputs`.
    pub fn encode(&self, text: &Text, o: &TokenizerOptions) -> std::result::Result<Encoded, (String, String)> {
        let need_max = o.truncation || o.padding == Padding::MaxLength;
        let max_length = match (o.max_length, &self.model_max) {
            (Some(n), _) => Some(n),
            (None, Some((n, _))) if need_max => Some(*n),
            (None, None) if need_max => {
                return Err((
                    "the model's max length is unknown".into(),
                    "give `max_length:` under `tokenizer:` (neither sentence_bert_config.json nor \
                     tokenizer_config.json has one)"
                        .into(),
                ));
            }
            _ => None,
        };
        let mut tk = self.tk.clone();
        let trunc = o.truncation.then(|| TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_length.unwrap_or(usize::MAX),
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        });
        tk.with_truncation(trunc).map_err(|e| (format!("tokenizer: {e}"), "check `max_length`".into()))?;
        let pad = match &self.pad_token {
            Some(t) => {
                let id = self.tk.token_to_id(t).ok_or_else(|| {
                    (format!("the pad token `{t}` is not in the vocabulary"), "check tokenizer_config.json".into())
                })?;
                Some(PaddingParams {
                    strategy: match o.padding {
                        Padding::Longest => PaddingStrategy::BatchLongest,
                        Padding::MaxLength => PaddingStrategy::Fixed(max_length.unwrap_or(0)),
                    },
                    direction: if self.pad_left { PaddingDirection::Left } else { PaddingDirection::Right },
                    pad_to_multiple_of: None,
                    pad_id: id,
                    pad_type_id: 0,
                    pad_token: t.clone(),
                })
            }
            None => None,
        };
        tk.with_padding(pad);
        let inputs: Vec<EncodeInput> = (0..text.len())
            .map(|i| match text.row(i).as_slice() {
                [a] => EncodeInput::Single(a.to_string().into()),
                [a, b] => EncodeInput::Dual(a.to_string().into(), b.to_string().into()),
                _ => unreachable!(),
            })
            .collect();
        let enc = tk
            .encode_batch(inputs, o.add_special_tokens)
            .map_err(|e| (format!("tokenizer: {e}"), "check the text and the tokenizer options".into()))?;
        let seq = enc.first().map_or(0, |e| e.len());
        if let Some(i) = enc.iter().position(|e| e.len() != seq) {
            return Err((
                format!(
                    "rows 0 and {i} tokenize to {seq} and {} tokens and the tokenizer has no pad token",
                    enc[i].len()
                ),
                "give rows of equal token length, or a tokenizer with a pad token".into(),
            ));
        }
        if let Some(i) = enc.iter().position(|e| e.get_attention_mask().iter().all(|&m| m == 0)) {
            return Err((format!("row {i} tokenizes to no token"), "give it some text".into()));
        }
        let batch = enc.len();
        let m = |f: fn(&tokenizers::Encoding) -> &[u32]| IdMatrix {
            batch,
            seq,
            data: enc.iter().flat_map(|e| f(e).iter().map(|&v| v as i64)).collect(),
        };
        Ok(Encoded {
            input_ids: m(|e| e.get_ids()),
            attention_mask: m(|e| e.get_attention_mask()),
            token_type_ids: m(|e| e.get_type_ids()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        let one: Text = serde_norway::from_str("\"a b\"").unwrap();
        assert_eq!(one, Text::One("a b".into()));
        let pairs: Text = serde_norway::from_str("[[q, p], [r, s]]").unwrap();
        assert_eq!(pairs.row(1), vec!["r", "s"]);
        assert!(serde_norway::from_str::<Text>("[a, [q, p]]").unwrap_err().to_string().contains("mixes"));
        assert!(serde_norway::from_str::<Text>("[[a, b, c]]").unwrap_err().to_string().contains("exactly two"));
    }
}
