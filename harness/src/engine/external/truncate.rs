//! Model files cut to their first k layers, for depth bisection of external engines.
//!
//! Bisection loads an engine on `truncated(spec, k)`, which lowers only the layer count in the
//! config it carries. An in-process engine builds from that config; an external engine reads the
//! checkpoint's files, and llama.cpp takes the layer count from the GGUF itself (it would run
//! every layer, or refuse a config that disagrees). So for an external engine the harness writes
//! the checkpoint directory again with k layers: config.json, every `*.safetensors` without the
//! tensors of deeper layers, every `*.gguf` with `<arch>.block_count = k` and no `blk.N.*` for
//! N >= k. Other files (tokenizer, ...) are linked. The directory lives as long as the loaded
//! model.

use std::path::Path;

use crate::case::ModelSpec;
use crate::error::{Error, Result};

/// A copy of `spec`'s checkpoint directory with as many layers as its config says, when that is
/// fewer than the directory's own config.json has; None when the files already fit.
pub fn files_for(spec: &ModelSpec) -> Result<Option<tempfile::TempDir>> {
    let Ok(Some(k)) = harness_api::model::layer_count(&spec.config) else { return Ok(None) };
    let config_path = spec.dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&config_path) else { return Ok(None) };
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| Error::golden(format!("{}: {e}", config_path.display())))?;
    let full = ["num_hidden_layers", "n_layers"].iter().find_map(|key| json.get(*key).and_then(|v| v.as_u64()));
    match full {
        Some(l) if (k as u64) < l => {}
        _ => return Ok(None),
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("harness-{}-{k}-layers-", spec.id.replace('/', "_")))
        .tempdir()
        .map_err(|e| Error::io(&std::env::temp_dir(), &e))?;
    harness_api::model::truncate_config(&mut json, k);
    let out = dir.path().join("config.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::engine(e.to_string()))?;
    std::fs::write(&out, text).map_err(|e| Error::io(&out, &e))?;
    let entries = std::fs::read_dir(&spec.dir).map_err(|e| Error::io(&spec.dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&spec.dir, &e))?;
        let (src, name) = (entry.path(), entry.file_name());
        let dst = dir.path().join(&name);
        let name = name.to_string_lossy();
        if name == "config.json" {
            continue;
        }
        if name.ends_with(".safetensors") {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, &e))?;
            let cut = safetensors_layers(&bytes, k).map_err(|e| Error::golden(format!("{}: {e}", src.display())))?;
            std::fs::write(&dst, cut).map_err(|e| Error::io(&dst, &e))?;
        } else if name.ends_with(".gguf") {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, &e))?;
            let cut = gguf_blocks(&bytes, k).map_err(|e| Error::golden(format!("{}: {e}", src.display())))?;
            std::fs::write(&dst, cut).map_err(|e| Error::io(&dst, &e))?;
        } else {
            link(&src, &dst)?;
        }
    }
    Ok(Some(dir))
}

fn link(src: &Path, dst: &Path) -> Result<()> {
    let src = std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf());
    #[cfg(unix)]
    let r = std::os::unix::fs::symlink(&src, dst);
    #[cfg(not(unix))]
    let r = std::fs::copy(&src, dst).map(|_| ());
    r.map_err(|e| Error::io(dst, &e))
}

/// The layer a checkpoint tensor belongs to: the first numeric segment of its name
/// (`model.layers.3.mlp.up_proj.weight` -> 3); None for embeddings, final norm, head.
fn layer_of_tensor(name: &str) -> Option<usize> {
    name.split('.').find_map(|s| s.parse::<usize>().ok())
}

/// A safetensors file without the tensors of layers >= k (metadata kept).
pub fn safetensors_layers(bytes: &[u8], k: usize) -> std::result::Result<Vec<u8>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter(|(name, _)| layer_of_tensor(name).is_none_or(|i| i < k)).collect();
    safetensors::serialize(kept, meta.metadata().clone()).map_err(|e| e.to_string())
}

/// A GGUF file (version 2 or 3) with `<general.architecture>.block_count` set to `k` and the
/// tensors `blk.N.*` for N >= k removed; everything else byte for byte.
pub fn gguf_blocks(bytes: &[u8], k: usize) -> std::result::Result<Vec<u8>, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    if r.take(4)? != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} (2 and 3 are read)"));
    }
    let n_tensors = r.u64()? as usize;
    let n_kv = r.u64()?;
    // Each key/value: (key, type, value bytes).
    let mut kvs = Vec::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let start = r.pos;
        r.skip_value(ty)?;
        kvs.push((key, ty, start, r.pos));
    }
    let value_of = |key: &str| kvs.iter().find(|(k, ..)| k == key).map(|&(_, ty, s, e)| (ty, &bytes[s..e]));
    let arch = match value_of("general.architecture") {
        Some((8, v)) => String::from_utf8_lossy(&v[8..]).into_owned(),
        _ => return Err("no general.architecture".into()),
    };
    let alignment = match value_of("general.alignment") {
        Some((4, v)) => u32::from_le_bytes(v.try_into().unwrap()) as usize,
        _ => 32,
    };
    let block_key = format!("{arch}.block_count");
    if value_of(&block_key).is_none() {
        return Err(format!("no {block_key}"));
    }
    struct Info {
        name: String,
        dims: Vec<u64>,
        ty: u32,
        offset: u64,
    }
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n = r.u32()? as usize;
        let dims = (0..n).map(|_| r.u64()).collect::<std::result::Result<Vec<_>, _>>()?;
        let ty = r.u32()?;
        let offset = r.u64()?;
        infos.push(Info { name, dims, ty, offset });
    }
    let data_start = r.pos.div_ceil(alignment) * alignment;
    let data_len = bytes.len().checked_sub(data_start).ok_or("truncated file")?;
    // A tensor's bytes run to the next tensor's offset (padding included) or the end.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| infos[i].offset);
    let mut span = vec![(0usize, 0usize); infos.len()];
    for (j, &i) in order.iter().enumerate() {
        let start = infos[i].offset as usize;
        let end = order.get(j + 1).map_or(data_len, |&n| infos[n].offset as usize);
        if start > end || end > data_len {
            return Err(format!("tensor `{}` lies outside the file", infos[i].name));
        }
        span[i] = (start, end);
    }
    let keep = |name: &str| {
        name.strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok())
            .is_none_or(|n| n < k)
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&version.to_le_bytes());
    let kept: Vec<usize> = order.iter().copied().filter(|&i| keep(&infos[i].name)).collect();
    out.extend_from_slice(&(kept.len() as u64).to_le_bytes());
    out.extend_from_slice(&n_kv.to_le_bytes());
    for (key, ty, s, e) in &kvs {
        put_string(&mut out, key);
        out.extend_from_slice(&ty.to_le_bytes());
        if *key == block_key {
            match ty {
                4 => out.extend_from_slice(&(k as u32).to_le_bytes()),
                5 => out.extend_from_slice(&(k as i32).to_le_bytes()),
                10 => out.extend_from_slice(&(k as u64).to_le_bytes()),
                11 => out.extend_from_slice(&(k as i64).to_le_bytes()),
                _ => return Err(format!("{block_key} has value type {ty}, not an integer")),
            }
        } else {
            out.extend_from_slice(&bytes[*s..*e]);
        }
    }
    let mut offset = 0usize;
    let mut chunks = Vec::with_capacity(kept.len());
    for &i in &kept {
        let info = &infos[i];
        put_string(&mut out, &info.name);
        out.extend_from_slice(&(info.dims.len() as u32).to_le_bytes());
        for d in &info.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&info.ty.to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        let (s, e) = span[i];
        chunks.push(&bytes[data_start + s..data_start + e]);
        offset += (e - s).div_ceil(alignment) * alignment;
    }
    out.resize(out.len().div_ceil(alignment) * alignment, 0);
    for chunk in chunks {
        out.extend_from_slice(chunk);
        out.resize(out.len().div_ceil(alignment) * alignment, 0);
    }
    Ok(out)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("truncated GGUF header")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// Past one value of GGUF type `ty`.
    fn skip_value(&mut self, ty: u32) -> std::result::Result<(), String> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                self.string()?;
                return Ok(());
            }
            9 => {
                let inner = self.u32()?;
                let n = self.u64()?;
                for _ in 0..n {
                    self.skip_value(inner)?;
                }
                return Ok(());
            }
            _ => return Err(format!("unknown GGUF value type {ty}")),
        };
        self.take(size)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(version: u32, blocks: usize) -> Vec<u8> {
        // Two metadata keys and a tensor per block plus one shared, 4 f32 each.
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&((blocks + 1) as u64).to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        put_string(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes());
        put_string(&mut out, "llama");
        put_string(&mut out, "llama.block_count");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(blocks as u32).to_le_bytes());
        put_string(&mut out, "tokenizer.ggml.tokens");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        put_string(&mut out, "<s>");
        put_string(&mut out, "a");
        let names: Vec<String> =
            std::iter::once("token_embd.weight".to_string()).chain((0..blocks).map(|i| format!("blk.{i}.w"))).collect();
        for (i, name) in names.iter().enumerate() {
            put_string(&mut out, name);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&4u64.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&((i * 32) as u64).to_le_bytes());
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for i in 0..names.len() {
            for j in 0..4 {
                out.extend_from_slice(&((i * 10 + j) as f32).to_le_bytes());
            }
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }

    #[test]
    fn a_gguf_cut_to_k_blocks_is_the_file_written_with_k_blocks() {
        for version in [2, 3] {
            // The cut file equals one built with two blocks: same keys, block_count 2, the
            // tensors of blocks 0 and 1 with their data, and nothing of block 2.
            assert_eq!(gguf_blocks(&gguf(version, 3), 2).unwrap(), gguf(version, 2));
            assert_eq!(gguf_blocks(&gguf(version, 3), 3).unwrap(), gguf(version, 3));
        }
    }

    #[test]
    fn a_file_that_is_not_gguf_or_is_cut_short_is_an_error() {
        assert!(gguf_blocks(b"GGML....", 1).unwrap_err().contains("magic"));
        let full = gguf(3, 2);
        assert!(gguf_blocks(&full[..40], 1).is_err());
    }

    #[test]
    fn safetensors_keep_the_shared_tensors_and_the_first_k_layers() {
        let data = [0u8; 8];
        let view =
            |shape: Vec<usize>| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).unwrap();
        let tensors = vec![
            ("model.embed_tokens.weight".to_string(), view(vec![2])),
            ("model.layers.0.mlp.weight".to_string(), view(vec![2])),
            ("model.layers.1.mlp.weight".to_string(), view(vec![2])),
            ("model.norm.weight".to_string(), view(vec![2])),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let cut = safetensors_layers(&bytes, 1).unwrap();
        let st = safetensors::SafeTensors::deserialize(&cut).unwrap();
        let mut names = st.names();
        names.sort();
        assert_eq!(names, ["model.embed_tokens.weight", "model.layers.0.mlp.weight", "model.norm.weight"]);
    }
}
