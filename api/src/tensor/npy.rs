//! Reading `.npy` files (the `npy` feature): goldens and external engines' outputs.

use std::path::Path;
use std::sync::OnceLock;

use memmap2::Mmap;
use npyz::{DType, Order, TypeChar, TypeStr};

use super::{Storage, Tensor, numel};
use crate::error::{Error, Result};

/// Read a `.npy` file. `declared` is the dtype the manifest records; it disambiguates bfloat16,
/// which numpy has no dtype for and tools/ stores as `<u2` bit patterns.
pub fn read_npy(path: &Path, declared: Option<&str>) -> Result<Tensor> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, &e))?;
    if file.metadata().map_err(|e| Error::io(path, &e))?.len() == 0 {
        return Err(empty(path));
    }
    if let Some(e) = crate::error::git_lfs_pointer_file(path) {
        return Err(e);
    }
    // SAFETY: goldens are not modified while a run reads them; tools/ replaces files by rename,
    // which leaves an existing mapping on the old inode.
    // Pre-faulted: one call sets up every page instead of a page fault per 4-64 KiB on touch.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| Error::io(path, &e))?;
    parse(map, declared).map_err(|e| e.file(path))
}

fn empty(path: &Path) -> Error {
    Error::golden("empty file, not a .npy").file(path).hint("regenerate it with tools/regen_goldens.py")
}

/// Open a float32 little-endian C-order `.npy` without reading or mapping its data: the header
/// is read and checked against the file's length, and the data is streamed by
/// [`crate::metrics::compare_golden`] or mapped on first use. Any other file is read with
/// [`read_npy`] (which gives the errors).
pub fn read_npy_deferred(path: &Path, declared: Option<&str>) -> Result<Tensor> {
    use std::io::Read;
    let deferred = || -> Option<Tensor> {
        let mut file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        let mut head = vec![0u8; len.min(65536 + 12)];
        file.read_exact(&mut head).ok()?;
        let (fortran, dims, ts, offset) = simple_header(&head).or_else(|| npyz_header(&head).ok())?;
        let shape: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
        let count = numel(&shape)?;
        let f32_le =
            ts.type_char() == TypeChar::Float && ts.size_field() == 4 && ts.endianness() != npyz::Endianness::Big;
        let ok = !fortran
            && f32_le
            && offset % 4 == 0
            && count.checked_mul(4)?.checked_add(offset)? == len
            && declared.is_none_or(|d| d == "float32");
        ok.then(|| Tensor {
            shape,
            storage: Storage::Deferred { file, offset, len: count, map: OnceLock::new() },
            source_dtype: "float32".into(),
        })
    };
    match deferred() {
        Some(t) => Ok(t),
        None => read_npy(path, declared),
    }
}

/// From this size on, [`read_npy_owned`] reads into memory advised for huge pages.
const HUGE_OUTPUT: usize = 8 << 20;

/// Read a `.npy` file into memory the process owns (an external engine's output: the engine may
/// still hold or rewrite its files, so they are not mapped). A float32 little-endian C-order file
/// is read straight into its `f32` buffer, one copy from the page cache; anything else is parsed
/// as [`read_npy_bytes`] does.
pub fn read_npy_owned(path: &Path, declared: Option<&str>) -> Result<Tensor> {
    use std::io::Read;
    let direct = || -> Option<Tensor> {
        let mut file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        let mut head = vec![0u8; len.min(4096)];
        file.read_exact(&mut head).ok()?;
        let (fortran, dims, ts, offset) = simple_header(&head).or_else(|| npyz_header(&head).ok())?;
        let shape: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
        let count = numel(&shape)?;
        let f32_le =
            ts.type_char() == TypeChar::Float && ts.size_field() == 4 && ts.endianness() != npyz::Endianness::Big;
        let ok = !fortran
            && f32_le
            && cfg!(target_endian = "little")
            && offset <= head.len()
            && count.checked_mul(4)?.checked_add(offset)? == len
            && declared.is_none_or(|d| d == "float32");
        if !ok {
            return None;
        }
        let have = head.len() - offset;
        let fill = |bytes: &mut [u8], file: &mut std::fs::File| -> Option<()> {
            bytes[..have].copy_from_slice(&head[offset..]);
            file.read_exact(&mut bytes[have..]).ok()
        };
        let storage = if count * 4 >= HUGE_OUTPUT {
            // Most of reading a large output into fresh memory is page faults (one per 4 KiB);
            // anonymous memory advised for huge pages takes one per 2 MiB where the kernel allows.
            let mut map = memmap2::MmapMut::map_anon(count * 4).ok()?;
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            fill(&mut map, &mut file)?;
            Storage::Mapped { map: map.make_read_only().ok()?, offset: 0, len: count }
        } else {
            let mut values = vec![0f32; count];
            fill(bytemuck::cast_slice_mut::<f32, u8>(&mut values), &mut file)?;
            Storage::Owned(values)
        };
        Some(Tensor { shape, storage, source_dtype: "float32".into() })
    };
    match direct() {
        Some(t) => Ok(t),
        None => {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, &e))?;
            parse_npy_bytes(&bytes, declared).map_err(|e| e.file(path))
        }
    }
}

/// Parse the bytes of the `.npy` file `path`, already read (small goldens: one read serves
/// parsing and hashing, and copying a few kilobytes is cheaper than mapping them).
pub fn read_npy_bytes(path: &Path, bytes: &[u8], declared: Option<&str>) -> Result<Tensor> {
    if bytes.is_empty() {
        return Err(empty(path));
    }
    if let Some(e) = crate::error::git_lfs_pointer(path, bytes) {
        return Err(e);
    }
    parse_npy_bytes(bytes, declared).map_err(|e| e.file(path))
}

/// Parse `.npy` bytes held in memory (used by the fuzz targets and tests).
pub fn parse_npy_bytes(bytes: &[u8], declared: Option<&str>) -> Result<Tensor> {
    let d = decode(bytes, declared)?;
    let values = d.values.unwrap_or_else(|| f32_le(&bytes[d.offset..d.offset + d.count * 4]));
    Ok(Tensor { shape: d.shape, storage: Storage::Owned(values), source_dtype: d.dtype.to_string() })
}

fn parse(map: Mmap, declared: Option<&str>) -> Result<Tensor> {
    let d = decode(&map, declared)?;
    let storage = match d.values {
        Some(v) => Storage::Owned(v),
        None => Storage::Mapped { map, offset: d.offset, len: d.count },
    };
    Ok(Tensor { shape: d.shape, storage, source_dtype: d.dtype.to_string() })
}

fn f32_le(b: &[u8]) -> Vec<f32> {
    let mut v = vec![0f32; b.len() / 4];
    if cfg!(target_endian = "little") {
        // One memcpy; the per-element loop costs ~20 ns an element in debug builds.
        let n = v.len() * 4;
        bytemuck::cast_slice_mut::<f32, u8>(&mut v).copy_from_slice(&b[..n]);
    } else {
        for (x, c) in v.iter_mut().zip(b.chunks_exact(4)) {
            *x = f32::from_le_bytes(c.try_into().unwrap());
        }
    }
    v
}

/// A parsed header; `values` is None when the data can be used in place as aligned f32.
struct Decoded {
    shape: Vec<usize>,
    dtype: &'static str,
    offset: usize,
    count: usize,
    values: Option<Vec<f32>>,
}

/// A golden's header is one flat dict literal (`{'descr': '<f4', 'fortran_order': False,
/// 'shape': (2, 3), }`). npyz's literal parser backtracks exponentially on nested brackets (a
/// 154-byte header of `{{{{...` ran for minutes: found by fuzzing), so anything nested is refused
/// before it gets there; structured dtypes (lists) are not tensors anyway.
fn check_header_text(h: &[u8]) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::golden(format!("not a valid .npy file: the header {why}"))
            .hint("a tensor's header is one flat dict: {'descr': ..., 'fortran_order': ..., 'shape': (...)}"))
    };
    let (mut braces, mut depth) = (0, 0i32);
    for &c in h {
        match c {
            b'{' => braces += 1,
            b'[' => return bad("holds a list (a structured dtype)"),
            b'(' => {
                depth += 1;
                if depth > 1 {
                    return bad("nests tuples");
                }
            }
            b')' => depth -= 1,
            _ => {}
        }
    }
    if braces > 1 {
        return bad("nests dicts");
    }
    Ok(())
}

/// npyz multiplies the header's dimensions unchecked (a panic on overflow in debug builds), so a
/// hostile shape is refused before npyz sees it.
fn precheck_shape(bytes: &[u8]) -> Result<()> {
    // npyz also allocates the header length the file claims (u32 in format 2/3) before reading
    // it: a 19-byte file claiming a 2.6 GB header was enough to exhaust memory (found by fuzzing).
    if bytes.len() >= 8 && bytes.starts_with(b"\x93NUMPY") {
        let (len_bytes, start) = if bytes[6] == 1 { (2, 10) } else { (4, 12) };
        if bytes.len() < start {
            return Err(Error::golden("not a valid .npy file: the header is cut short")
                .hint("the file is corrupt or truncated"));
        }
        let mut n = [0u8; 4];
        n[..len_bytes].copy_from_slice(&bytes[8..8 + len_bytes]);
        let header_len = u32::from_le_bytes(n) as usize;
        if header_len <= bytes.len() - start {
            check_header_text(&bytes[start..start + header_len])?;
        }
        if header_len > bytes.len() - start {
            return Err(Error::golden(format!(
                "not a valid .npy file: the header claims {header_len} bytes, the file has {} after the preamble",
                bytes.len() - start
            ))
            .hint("the file is corrupt or truncated; regenerate it with tools/regen_goldens.py"));
        }
    }
    // Only the header: magic (6), version (2), header length (2 bytes in v1, 4 after).
    let header_end = match bytes.get(6..12) {
        Some([1, _, l0, l1, ..]) => 10 + u16::from_le_bytes([*l0, *l1]) as usize,
        Some([_, _, l0, l1, l2, l3]) => 12 + u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize,
        _ => bytes.len(),
    };
    let head = &bytes[..bytes.len().min(header_end).min(65536 + 12)];
    let text = String::from_utf8_lossy(head);
    let Some(i) = text.find("'shape'") else { return Ok(()) };
    let rest = &text[i + 7..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return Ok(()) };
    if close < open {
        return Ok(());
    }
    let mut total: u64 = 1;
    for part in rest[open + 1..close].split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d: u64 = part.trim_end_matches('L').parse().map_err(|_| {
            Error::golden(format!("invalid dimension `{part}` in the .npy header")).hint("the file is corrupt")
        })?;
        total = total.checked_mul(d).ok_or_else(|| {
            Error::golden(format!("shape ({}) has more elements than fit in memory", &rest[open + 1..close]))
                .hint("the header is corrupt or hostile")
        })?;
    }
    if total > isize::MAX as u64 / 8 {
        return Err(Error::golden(format!("shape ({}) has more elements than fit in memory", &rest[open + 1..close]))
            .hint("the header is corrupt or hostile"));
    }
    Ok(())
}

/// A header as numpy writes it: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`,
/// space-padded, version 1-3. npyz parses headers with a general Python-literal grammar that
/// costs more than the rest of loading a small golden; anything but this exact form goes to it.
/// Returns (fortran order, shape, dtype, data offset).
fn simple_header(bytes: &[u8]) -> Option<(bool, Vec<u64>, TypeStr, usize)> {
    let rest = bytes.strip_prefix(b"\x93NUMPY")?;
    let (len, start): (usize, usize) = match *rest.get(..6)? {
        [1, 0, a, b, ..] => (u16::from_le_bytes([a, b]).into(), 10),
        [2 | 3, 0, a, b, c, d] => (u32::from_le_bytes([a, b, c, d]) as usize, 12),
        _ => return None,
    };
    let text = std::str::from_utf8(bytes.get(start..start.checked_add(len)?)?).ok()?;
    let text = text.strip_suffix('\n')?.trim_end_matches(' ');
    let text = text.strip_prefix("{'descr': '")?;
    let (descr, text) = text.split_once("', 'fortran_order': ")?;
    let (fortran, text) = match text {
        t if t.starts_with("False") => (false, &t[5..]),
        t if t.starts_with("True") => (true, &t[4..]),
        _ => return None,
    };
    let dims = text.strip_prefix(", 'shape': (")?.strip_suffix("), }")?;
    let dims = dims.strip_suffix(',').unwrap_or(dims);
    let mut shape = Vec::new();
    let mut total: u64 = 1;
    for d in dims.split(", ").filter(|d| !d.is_empty()) {
        if !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let d: u64 = d.parse().ok()?;
        // Overflowing shapes take npyz's path, whose precheck words the error.
        total = total.checked_mul(d).filter(|&t| t <= isize::MAX as u64 / 8)?;
        shape.push(d);
    }
    if shape.len() == 1 && !text.contains(",)") {
        return None; // `(5)` is not a tuple
    }
    Some((fortran, shape, descr.parse().ok()?, start + len))
}

fn npyz_header(bytes: &[u8]) -> Result<(bool, Vec<u64>, TypeStr, usize)> {
    precheck_shape(bytes)?;
    let mut cursor = bytes;
    let header = npyz::NpyHeader::from_reader(&mut cursor).map_err(|e| {
        // npyz's parse errors span several lines (a caret diagram); the first says what is wrong.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("").split(" -->").next().unwrap_or("").trim_end_matches([':', ' ']);
        Error::golden(format!("not a valid .npy file: {}", crate::error::lowercase_first(first)))
            .hint("the file is corrupt or truncated; regenerate it with tools/regen_goldens.py")
    })?;
    let ts = match header.dtype() {
        DType::Plain(ts) => ts,
        other => return Err(Error::golden(format!("structured dtype `{}` is not a tensor", other.descr()))),
    };
    Ok((header.order() == Order::Fortran, header.shape().to_vec(), ts, bytes.len() - cursor.len()))
}

fn decode(bytes: &[u8], declared: Option<&str>) -> Result<Decoded> {
    let (fortran, dims, ts, offset) = match simple_header(bytes) {
        Some(h) => h,
        None => npyz_header(bytes)?,
    };
    let cursor = &bytes[offset..];
    if fortran {
        return Err(Error::golden("Fortran-order .npy is not supported")
            .hint("save with np.ascontiguousarray(x) (tools/ always writes C order)"));
    }
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| Error::golden(format!("dimension {d} is too large"))))
        .collect::<Result<_>>()?;
    let count =
        numel(&shape).ok_or_else(|| Error::golden(format!("shape {shape:?} has more elements than fit in memory")))?;
    match ts.type_char() {
        TypeChar::Float | TypeChar::Int | TypeChar::Uint | TypeChar::Bool => {}
        TypeChar::Object => {
            return Err(Error::golden("object (pickled) arrays are refused: they can run code")
                .hint("goldens hold plain numbers; save with allow_pickle=False"));
        }
        _ => {
            return Err(Error::golden(format!("unsupported dtype `{ts}`")).hint(
                "goldens must be float32, float64, float16, bfloat16 (declared in the manifest), int64, int32, int8, uint8 or bool",
            ));
        }
    }
    let size = ts.size_field() as usize;
    let big = ts.endianness() == npyz::Endianness::Big && size > 1;
    if big {
        return Err(Error::golden(format!("big-endian dtype `{ts}` is not supported"))
            .hint("save little-endian: x.astype(x.dtype.newbyteorder('<'))"));
    }
    let need = count.checked_mul(size).ok_or_else(|| Error::golden(format!("shape {shape:?} overflows")))?;
    let have = cursor.len();
    if have < need {
        return Err(Error::golden(format!(
            "truncated: shape {shape:?} of `{ts}` needs {need} data bytes, the file has {have}"
        ))
        .hint("the file was cut short; regenerate it with tools/regen_goldens.py"));
    }
    if have > need {
        return Err(Error::golden(format!("{} trailing bytes after the data of shape {shape:?}", have - need))
            .hint("the file is corrupt; regenerate it"));
    }
    let data = &cursor[..need];
    let bf16 = declared == Some("bfloat16");
    let (dtype, values): (&str, Option<Vec<f32>>) = match (ts.type_char(), size) {
        (TypeChar::Float, 4) if (bytes.as_ptr() as usize + offset).is_multiple_of(4) => ("float32", None),
        (TypeChar::Float, 4) => ("float32", Some(f32_le(data))),
        (TypeChar::Float, 8) => {
            ("float64", Some(data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()))
        }
        (TypeChar::Float, 2) => {
            ("float16", Some(data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()))
        }
        (TypeChar::Uint, 2) if bf16 => {
            ("bfloat16", Some(data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()))
        }
        (TypeChar::Int, 8) => {
            ("int64", Some(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()))
        }
        (TypeChar::Int, 4) => {
            ("int32", Some(data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect()))
        }
        (TypeChar::Uint, 1) => ("uint8", Some(data.iter().map(|&b| b as f32).collect())),
        (TypeChar::Int, 1) => ("int8", Some(data.iter().map(|&b| b as i8 as f32).collect())),
        (TypeChar::Bool, 1) => ("bool", Some(data.iter().map(|&b| (b != 0) as u8 as f32).collect())),
        _ => {
            return Err(Error::golden(format!("unsupported dtype `{ts}`"))
                .hint("goldens must be float32, float64, float16, bfloat16 (declared in the manifest), int64, int32, int8, uint8 or bool"));
        }
    };
    if let Some(d) = declared
        && d != dtype
    {
        return Err(Error::golden(format!("the manifest says dtype {d} but the file holds {dtype}"))
            .hint("the golden and its manifest disagree; regenerate them"));
    }
    Ok(Decoded { shape, dtype, offset, count, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::write_npy;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn owned_reads_float32_directly_and_every_other_file_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // A float32 file longer than the first read (4 KiB), so the rest is read into place.
        let p = dir.path().join("a.npy");
        let values: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5).collect();
        write_npy(&p, &Tensor::new(vec![2, 2500], values.clone()).unwrap()).unwrap();
        let t = read_npy_owned(&p, None).unwrap();
        assert_eq!((t.shape(), t.data(), t.source_dtype.as_str()), (&[2, 2500][..], &values[..], "float32"));
        assert!(!t.is_mapped());
        // Past 8 MiB, into anonymous memory (not a map of the file, which the engine may rewrite).
        let big: Vec<f32> = (0..(3 << 20)).map(|i| (i % 977) as f32).collect();
        write_npy(&p, &Tensor::new(vec![3 << 20], big.clone()).unwrap()).unwrap();
        let t = read_npy_owned(&p, None).unwrap();
        std::fs::write(&p, b"rewritten").unwrap();
        assert_eq!(t.data(), &big[..]);
        let q = dir.path().join("b.npy");
        std::fs::write(&q, npy("<f8", false, "(2,)", &[1f64.to_le_bytes(), 2f64.to_le_bytes()].concat())).unwrap();
        let t = read_npy_owned(&q, None).unwrap();
        assert_eq!((t.data(), t.source_dtype.as_str()), (&[1f32, 2.][..], "float64"));
        // Cut short: the same error as parsing the bytes, with the file.
        write_npy(&p, &Tensor::new(vec![2, 2500], values).unwrap()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&q, &bytes[..bytes.len() - 4]).unwrap();
        let e = read_npy_owned(&q, None).unwrap_err();
        assert!(e.msg.contains("truncated"), "{e}");
    }

    #[test]
    fn roundtrip_through_file_is_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        write_npy(&p, &t).unwrap();
        let r = read_npy(&p, Some("float32")).unwrap();
        assert!(r.is_mapped());
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(r.data(), t.data());
    }

    #[test]
    fn large_float32_goldens_are_deferred_others_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        write_npy(&p, &t).unwrap();
        let d = read_npy_deferred(&p, Some("float32")).unwrap();
        assert!(d.unmapped_file().is_some() && d.is_mapped());
        assert_eq!((d.shape(), d.numel()), (&[2, 3][..], 6));
        assert_eq!(d.data(), t.data());
        // Another dtype, or a file that does not match its header, goes through `read_npy`.
        let f64s: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&p, npy("<f8", false, "(2,)", &f64s)).unwrap();
        let d = read_npy_deferred(&p, None).unwrap();
        assert!(d.unmapped_file().is_none() && d.data() == [1.5, -2.0]);
        std::fs::write(&p, npy("<f4", false, "(2, 3)", &f32s(&[1., 2.]))).unwrap();
        let err = read_npy_deferred(&p, None).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("a.npy"), "{err}");
        assert!(read_npy_deferred(&p, Some("float16")).is_err());
    }

    #[test]
    fn converts_other_dtypes() {
        let f64s: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = parse_npy_bytes(&npy("<f8", false, "(2,)", &f64s), None).unwrap();
        assert_eq!((t.data(), t.source_dtype.as_str()), (&[1.5f32, -2.0][..], "float64"));
        let bf: Vec<u8> =
            [half::bf16::from_f32(0.5), half::bf16::from_f32(-3.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = parse_npy_bytes(&npy("<u2", false, "(2,)", &bf), Some("bfloat16")).unwrap();
        assert_eq!(t.data(), &[0.5, -3.0]);
        let ids: Vec<u8> = [7i64, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(parse_npy_bytes(&npy("<i8", false, "(1, 2)", &ids), None).unwrap().data(), &[7.0, 9.0]);
    }

    #[test]
    fn numpy_headers_take_the_fast_path_and_agree_with_npyz() {
        let data = f32s(&[0.0; 6]);
        for (descr, fortran, shape) in [
            ("<f4", false, "(2, 3)"),
            ("<f4", false, "(6,)"),
            ("<f4", true, "(3, 2)"),
            (">f4", false, "(1, 6)"),
            ("<f8", false, "(3,)"),
            ("|b1", false, "(24,)"),
            ("<u2", false, "(12,)"),
            ("<f4", false, "(0, 7)"),
            ("<f4", false, "()"),
        ] {
            let bytes = npy(descr, fortran, shape, &data);
            let (f, dims, ts, off) = simple_header(&bytes).unwrap_or_else(|| panic!("{descr} {shape}"));
            let (nf, ndims, nts, noff) = npyz_header(&bytes).unwrap();
            assert_eq!((f, dims, ts.to_string(), off), (nf, ndims, nts.to_string(), noff), "{descr} {shape}");
        }
        // Anything unusual is left to npyz.
        for shape in ["(6)", "(6L,)", "(2,3)", "(-1,)", "(4294967296, 4294967296, 4294967296)"] {
            assert!(simple_header(&npy("<f4", false, shape, &data)).is_none(), "{shape}");
        }
        let mut odd = npy("<f4", false, "(6,)", &data);
        odd[11] = b'"'; // {"descr': ... (same length, not numpy's form)
        assert!(simple_header(&odd).is_none());
        assert!(simple_header(&npy("<f4", false, "(6,)", &data)).is_some());
    }

    #[test]
    fn refuses_bad_files_with_reasons() {
        let data = f32s(&[1., 2., 3., 4.]);
        let err = |b: Vec<u8>| parse_npy_bytes(&b, None).unwrap_err().to_string();
        assert!(err(npy("<f4", true, "(2, 2)", &data)).contains("Fortran-order"));
        assert!(err(npy(">f4", false, "(2, 2)", &data)).contains("big-endian"));
        assert!(err(npy("<f4", false, "(2, 3)", &data)).contains("truncated"));
        assert!(err(npy("<c8", false, "(2,)", &data)).contains("unsupported dtype"));
        assert!(err(b"garbage".to_vec()).contains("not a valid .npy"));
        assert!(err(npy("<f4", false, "(4294967296, 4294967296, 4294967296)", &data)).contains("more elements"));
        assert!(
            parse_npy_bytes(&npy("<f4", false, "(2, 2)", &data), Some("float16"))
                .unwrap_err()
                .to_string()
                .contains("manifest says")
        );
    }
}
