//! PyTorch `.pth` state dicts: `torch.save`'s zip archive of a pickle and raw storages.
//!
//! The archive is read with the `zip` crate; the pickle by a small VM that only builds data,
//! dicts and tensor references: a callable it does not know stays an opaque value that is
//! never called, so no pickled code runs. Every length and offset is checked against what
//! the file holds, so a truncated or corrupted file is an error, never a panic, a huge
//! allocation or a tensor of made-up values.
//!
//! Why not burn-store's `PytorchReader` (burn-store 0.21, `pytorch` feature): it fills a
//! storage that is shorter than its tensor with zeros instead of failing (a truncated
//! checkpoint would load as a partly zeroed model), ignores the strides of non-contiguous
//! tensors, and sizes buffers from the pickle's shapes before checking them against the file.

use anyhow::{anyhow, bail, Context, Result};
use mosic::tensors::{Dtype, HostTensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// `torch.save`d (nested) dicts of tensors, flattened to dotted names.
pub fn read(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        anyhow!(
            "not a zip archive ({e}; a legacy torch.save file? re-save it with a recent PyTorch)"
        )
    })?;
    check_members(&mut zip)?;
    let pkl_name = zip
        .file_names()
        .filter(|k| k.ends_with("/data.pkl") && k.matches('/').count() == 1)
        .min()
        .ok_or_else(|| anyhow!("no data.pkl in the archive"))?
        .to_string();
    let root = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = member(&mut zip, &pkl_name)?;
    let value = unpickle(&pkl)?;
    if !matches!(value, Pv::Dict(..)) {
        bail!(
            "the pickle holds no dict of tensors (a whole pickled model rather than a state dict?)"
        );
    }
    let mut found = Vec::new();
    walk(&value, "", 0, &mut found)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = HashMap::new();
    // What the tensors may hold in all: views of one storage can repeat it, a few times in
    // a real checkpoint (tied weights), not without bound.
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as usize;
    let out_budget = file_bytes.saturating_add(1 << 20);
    let mut out_elems = 0usize;
    for (name, t) in found {
        let Some(esize) = t.dtype.size() else {
            continue; // complex, quantised, ...: never a ViT weight
        };
        let bytes = match storages.get(&t.key) {
            Some(b) => b,
            None => {
                let b = member(&mut zip, &format!("{root}data/{}", t.key))
                    .with_context(|| format!("storage {} of {name}", t.key))?;
                storages.entry(t.key.clone()).or_insert(b)
            }
        };
        let numel = checked_product(&t.shape)
            .ok_or_else(|| anyhow!("{name}: shape {:?} overflows", t.shape))?;
        // Elements from the offset to the last one the strides reach.
        let span = if numel == 0 {
            Some(0)
        } else {
            t.shape
                .iter()
                .zip(&t.stride)
                .try_fold(1usize, |acc, (n, s)| acc.checked_add((n - 1).checked_mul(*s)?))
        }
        .ok_or_else(|| anyhow!("{name}: strides {:?} overflow", t.stride))?;
        let need = t.offset.checked_add(span).and_then(|e| e.checked_mul(esize));
        let Some(end) = need.filter(|&e| e <= bytes.len()) else {
            bail!(
                "{name}: shape {:?} at offset {} runs past its storage of {} bytes (truncated or corrupt file)",
                t.shape,
                t.offset,
                bytes.len()
            );
        };
        // A view with more elements than its storage repeats values (zero strides): never a
        // weight, and the way a small file asks for terabytes.
        if numel > bytes.len() / esize {
            bail!(
                "{name}: shape {:?} has {numel} elements, more than its storage's {} (a broadcast view, not a weight)",
                t.shape,
                bytes.len() / esize
            );
        }
        out_elems = out_elems.saturating_add(numel);
        if out_elems > out_budget {
            bail!("the tensors view their storages more than once over ({out_elems} elements from a {file_bytes}-byte file)");
        }
        let flat = HostTensor::decode(t.dtype, &bytes[t.offset * esize..end]).expect("sized dtype");
        let contiguous = {
            let mut expect = 1;
            t.shape.iter().zip(&t.stride).rev().all(|(n, s)| {
                let ok = *n == 1 || *s == expect;
                expect *= n;
                ok
            })
        };
        let data = if contiguous {
            flat[..numel].to_vec()
        } else {
            (0..numel)
                .map(|mut i| {
                    let mut at = 0;
                    for (n, s) in t.shape.iter().zip(&t.stride).rev() {
                        at += (i % n) * s;
                        i /= n;
                    }
                    flat[at]
                })
                .collect()
        };
        out.insert(name, HostTensor::new(t.shape, data));
    }
    Ok(out)
}

/// The archive's members may not share bytes: two members over the same data (a crafted
/// archive) would let one storage stand for many.
fn check_members<R: std::io::Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>) -> Result<()> {
    let mut spans = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| anyhow!("zip member {i}: {e}"))?;
        let start = f.header_start();
        let end = f.data_start().unwrap_or(start).saturating_add(f.compressed_size());
        spans.push((start, end, f.name().to_string()));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            bail!("zip members {} and {} overlap (a crafted archive)", w[0].2, w[1].2);
        }
    }
    Ok(())
}

fn checked_product(v: &[usize]) -> Option<usize> {
    v.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

/// A whole stored member. torch.save writes them uncompressed; the `zip` crate is built
/// without decompressors, so anything else is refused by name.
fn member<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Vec<u8>> {
    let mut f = zip.by_name(name).map_err(|e| anyhow!("zip member {name}: {e}"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| anyhow!("zip member {name}: {e} (truncated or corrupt file)"))?;
    Ok(buf)
}

/// A tensor as the pickle describes it: a view of a storage.
#[derive(Clone, Debug)]
struct TensorRef {
    key: String,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// Deepest nesting of containers accepted; state dicts nest a few levels.
const MAX_DEPTH: usize = 64;

/// The values a state-dict pickle is made of. Anything else becomes `Opaque`: it is never
/// constructed, so no pickled code runs. Containers carry their nesting depth.
#[derive(Clone, Debug)]
enum Pv {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Pv>, usize),
    List(Vec<Pv>, usize),
    Dict(Vec<(Pv, Pv)>, usize),
    Global(String),
    Storage { key: String, dtype: Dtype },
    Tensor(TensorRef),
    Opaque,
    Mark,
}

impl Pv {
    fn depth(&self) -> usize {
        match self {
            Pv::Tuple(_, d) | Pv::List(_, d) | Pv::Dict(_, d) => *d,
            _ => 0,
        }
    }
    /// The cost of copying the tree (DUP, PUT and memo reads copy): its values, and the
    /// bytes of its strings.
    fn cost(&self) -> usize {
        match self {
            Pv::Tuple(v, _) | Pv::List(v, _) => 1 + v.iter().map(Pv::cost).sum::<usize>(),
            Pv::Dict(v, _) => 1 + v.iter().map(|(k, x)| k.cost() + x.cost()).sum::<usize>(),
            Pv::Str(s) | Pv::Global(s) => 1 + s.len(),
            Pv::Storage { key, .. } => 1 + key.len(),
            Pv::Tensor(t) => 1 + t.key.len() + t.shape.len() + t.stride.len(),
            _ => 1,
        }
    }
}

fn tuple(items: Vec<Pv>) -> Result<Pv> {
    let d = 1 + items.iter().map(Pv::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        bail!("pickle: containers nested deeper than {MAX_DEPTH}");
    }
    Ok(Pv::Tuple(items, d))
}

/// Adds items to a list or dict on the stack, keeping its depth.
fn extend(target: &mut Pv, items: Vec<Pv>) -> Result<()> {
    let d = 1 + items.iter().map(Pv::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        bail!("pickle: containers nested deeper than {MAX_DEPTH}");
    }
    match target {
        Pv::List(l, depth) => {
            l.extend(items);
            *depth = (*depth).max(d);
        }
        Pv::Dict(m, depth) => {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                m.push((k, v));
            }
            *depth = (*depth).max(d);
        }
        _ => {} // items set on an opaque object: dropped, as the object itself
    }
    Ok(())
}

fn storage_dtype(class: &str) -> Dtype {
    match class.rsplit('.').next().unwrap_or("") {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::Bool,
        _ => Dtype::Other,
    }
}

fn as_usizes(v: &Pv) -> Option<Vec<usize>> {
    match v {
        Pv::Tuple(xs, _) | Pv::List(xs, _) => xs
            .iter()
            .map(|x| if let Pv::Int(i) = x { usize::try_from(*i).ok() } else { None })
            .collect(),
        _ => None,
    }
}

/// The pickle's bytes, read with every length checked.
struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .p
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| anyhow!("truncated pickle"))?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    /// A length of `width` bytes (1, 4 or 8), little-endian.
    fn len(&mut self, width: usize) -> Result<usize> {
        let v = match width {
            1 => self.u8()? as u64,
            4 => u32::from_le_bytes(self.le()?) as u64,
            _ => u64::from_le_bytes(self.le()?),
        };
        usize::try_from(v).map_err(|_| anyhow!("pickle: length {v} too large"))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.b[self.p..];
        let end =
            rest.iter().position(|&c| c == b'\n').ok_or_else(|| anyhow!("pickle: bad GLOBAL"))?;
        self.p += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

/// A pickle VM for protocols 2-5 that only builds data, dicts and tensor references.
fn unpickle(b: &[u8]) -> Result<Pv> {
    let mut c = Cursor { b, p: 0 };
    let mut stack: Vec<Pv> = Vec::new();
    let mut memo: HashMap<u64, Pv> = HashMap::new();
    // DUP, PUT and memo reads copy their value; bounded so a pickle that copies large values
    // over and over cannot take unbounded time or memory.
    let mut copied = 0usize;
    let budget = 64 * b.len() + 1_000_000;
    let mut charge = |v: &Pv| -> Result<()> {
        copied = copied.saturating_add(v.cost());
        if copied > budget {
            bail!("pickle: its values are copied more than the {budget} values and bytes it may copy (a crafted pickle)");
        }
        Ok(())
    };
    fn pop(stack: &mut Vec<Pv>) -> Result<Pv> {
        stack.pop().ok_or_else(|| anyhow!("pickle: stack underflow"))
    }
    fn pop_mark(stack: &mut Vec<Pv>) -> Result<Vec<Pv>> {
        let at = stack
            .iter()
            .rposition(|v| matches!(v, Pv::Mark))
            .ok_or_else(|| anyhow!("pickle: no mark"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    }
    loop {
        let at = c.p;
        let op = c.u8()?;
        match op {
            0x80 => {
                c.u8()?; // PROTO
            }
            0x95 => {
                c.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Pv::Mark),
            b'}' => stack.push(Pv::Dict(Vec::new(), 1)),
            b']' => stack.push(Pv::List(Vec::new(), 1)),
            b')' => stack.push(Pv::Tuple(Vec::new(), 1)),
            b'N' => stack.push(Pv::None),
            0x88 | 0x89 => stack.push(Pv::Bool),
            b'K' => stack.push(Pv::Int(c.u8()? as i64)),
            b'M' => stack.push(Pv::Int(u16::from_le_bytes(c.le()?) as i64)),
            b'J' => stack.push(Pv::Int(i32::from_le_bytes(c.le()?) as i64)),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = c.u8()? as usize;
                let bytes = c.take(n)?;
                stack.push(Pv::Int(long1(bytes)?));
            }
            b'G' => {
                c.take(8)?;
                stack.push(Pv::Float);
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' | 0x8e => {
                let width = match op {
                    b'X' | b'T' | b'B' => 4,
                    0x8d | 0x8e => 8,
                    _ => 1,
                };
                let n = c.len(width)?;
                let s = c.take(n)?;
                stack.push(match op {
                    b'B' | b'C' | 0x8e => Pv::Bytes,
                    _ => Pv::Str(String::from_utf8_lossy(s).into_owned()),
                });
            }
            b'c' => {
                let module = c.line()?;
                let name = c.line()?;
                stack.push(Pv::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Pv::Str(m), Pv::Str(n)) => stack.push(Pv::Global(format!("{m}.{n}"))),
                    _ => bail!("pickle: bad STACK_GLOBAL"),
                }
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => c.u8()? as u64,
                    b'r' => u32::from_le_bytes(c.le()?) as u64,
                    _ => memo.len() as u64,
                };
                let top =
                    stack.last().cloned().ok_or_else(|| anyhow!("pickle: PUT on empty stack"))?;
                charge(&top)?;
                memo.insert(idx, top);
            }
            b'h' | b'j' => {
                let idx =
                    if op == b'h' { c.u8()? as u64 } else { u32::from_le_bytes(c.le()?) as u64 };
                let v = memo.get(&idx).ok_or_else(|| anyhow!("pickle: unknown memo {idx}"))?;
                charge(v)?;
                stack.push(v.clone());
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let top =
                    stack.last().cloned().ok_or_else(|| anyhow!("pickle: DUP on empty stack"))?;
                charge(&top)?;
                stack.push(top);
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(tuple(items)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    bail!("pickle: stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(tuple(items)?);
            }
            b'a' => {
                let v = pop(&mut stack)?;
                let target =
                    stack.last_mut().ok_or_else(|| anyhow!("pickle: APPEND on empty stack"))?;
                extend(target, vec![v])?;
            }
            b'e' | b'u' => {
                let items = pop_mark(&mut stack)?;
                let target =
                    stack.last_mut().ok_or_else(|| anyhow!("pickle: APPENDS on empty stack"))?;
                extend(target, items)?;
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                let target =
                    stack.last_mut().ok_or_else(|| anyhow!("pickle: SETITEM on empty stack"))?;
                extend(target, vec![k, v])?;
            }
            b'b' => {
                pop(&mut stack)?; // BUILD's state: objects stay opaque, dicts keep their items
                if stack.is_empty() {
                    bail!("pickle: BUILD on empty stack");
                }
            }
            b'Q' => {
                // BINPERSID: ('storage', storage class, key, location, numel)
                let pid = pop(&mut stack)?;
                let v = match &pid {
                    Pv::Tuple(t, _) if t.len() >= 3 => match (&t[1], &t[2]) {
                        (Pv::Global(class), Pv::Str(key)) => {
                            Pv::Storage { key: key.clone(), dtype: storage_dtype(class) }
                        }
                        _ => Pv::Opaque,
                    },
                    _ => Pv::Opaque,
                };
                stack.push(v);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let name = if let Pv::Global(g) = &callable { g.as_str() } else { "" };
                let args = if let Pv::Tuple(a, _) = args { a } else { Vec::new() };
                let v = match name {
                    "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                        match (
                            args.first(),
                            args.get(1),
                            args.get(2).and_then(as_usizes),
                            args.get(3).and_then(as_usizes),
                        ) {
                            (
                                Some(Pv::Storage { key, dtype }),
                                Some(Pv::Int(off)),
                                Some(shape),
                                Some(stride),
                            ) if shape.len() == stride.len() && *off >= 0 => {
                                Pv::Tensor(TensorRef {
                                    key: key.clone(),
                                    dtype: *dtype,
                                    offset: *off as usize,
                                    shape,
                                    stride,
                                })
                            }
                            _ => Pv::Opaque,
                        }
                    }
                    "torch._utils._rebuild_parameter"
                    | "torch._utils._rebuild_parameter_with_state" => {
                        args.into_iter().next().unwrap_or(Pv::Opaque)
                    }
                    "collections.OrderedDict" | "builtins.dict" => Pv::Dict(Vec::new(), 1),
                    _ => Pv::Opaque,
                };
                stack.push(v);
            }
            0x82..=0x84 => bail!("pickle: extension registry opcodes are not supported"),
            _ => bail!("pickle: opcode 0x{op:02x} at byte {at} is not supported in a state dict"),
        }
    }
}

/// LONG1's little-endian two's complement, which must fit an i64 (bytes past the eighth only
/// extend the sign).
fn long1(bytes: &[u8]) -> Result<i64> {
    let n = bytes.len();
    if n == 0 {
        return Ok(0);
    }
    let negative = bytes[n - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0 };
    let mut le = [fill; 8];
    le[..n.min(8)].copy_from_slice(&bytes[..n.min(8)]);
    let v = i64::from_le_bytes(le);
    if n > 8 && (bytes[8..].iter().any(|&b| b != fill) || (v < 0) != negative) {
        bail!("pickle: an integer of {n} bytes does not fit 64 bits");
    }
    Ok(v)
}

/// Tensors of nested dicts under dotted names.
fn walk(v: &Pv, path: &str, depth: usize, out: &mut Vec<(String, TensorRef)>) -> Result<()> {
    match v {
        Pv::Dict(items, _) => {
            if depth > MAX_DEPTH {
                bail!("pickle: dicts nested deeper than {MAX_DEPTH}");
            }
            for (k, v) in items {
                let key = match k {
                    Pv::Str(s) => s.clone(),
                    Pv::Int(i) => i.to_string(),
                    _ => continue,
                };
                let full = if path.is_empty() { key } else { format!("{path}.{key}") };
                walk(v, &full, depth + 1, out)?;
            }
        }
        Pv::Tensor(t) => out.push((path.to_string(), t.clone())),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosic::rng::SplitMix64;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn fixture() -> Vec<u8> {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/vit/official_giant_reg4/weights.pth"
        );
        std::fs::read(p).unwrap()
    }

    /// The members of a zip, in order, with their bytes.
    fn members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        (0..z.len())
            .map(|i| {
                let mut f = z.by_index(i).unwrap();
                let mut b = Vec::new();
                f.read_to_end(&mut b).unwrap();
                (f.name().to_string(), b)
            })
            .collect()
    }

    fn write_zip(path: &Path, members: &[(String, Vec<u8>)], large: bool) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(large);
        for (name, b) in members {
            w.start_file(name.as_str(), opts).unwrap();
            w.write_all(b).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn zip64_archives_read_like_plain_ones() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.pth");
        std::fs::write(&plain, fixture()).unwrap();
        let want = read(&plain).unwrap();
        let z64 = dir.path().join("zip64.pth");
        // Zip64 throughout: the members' sizes and offsets in zip64 extra fields, and more
        // members than a plain end-of-directory record can count.
        let mut m = members(&fixture());
        m.extend((0..65_536).map(|i| (format!("archive/extra/{i}"), Vec::new())));
        write_zip(&z64, &m, true);
        let bytes = std::fs::read(&z64).unwrap();
        // The zip64 end-of-central-directory record is there.
        assert!(bytes.windows(4).any(|w| w == [0x50, 0x4b, 0x06, 0x06]));
        let got = read(&z64).unwrap();
        assert_eq!(got.len(), want.len());
        for (k, v) in &want {
            assert_eq!(&got[k], v, "{k}");
        }
    }

    /// A state dict one of whose values calls `os.system`: the call is never made (it stays
    /// an opaque value) and the tensors beside it load.
    #[test]
    fn a_pickle_that_calls_code_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut m = members(&fixture());
        let pkl = m.iter_mut().find(|(n, _)| n.ends_with("/data.pkl")).unwrap();
        // Insert `"evil": os.system("touch <marker>")` into the outer dict right after its
        // opening `}` (protocol 2: `\x80\x02}`), as SETITEM with a REDUCE.
        let at = pkl.1.iter().position(|&b| b == b'}').unwrap() + 1;
        let mut evil = Vec::new();
        evil.extend(b"X\x04\x00\x00\x00evil");
        evil.extend(b"cos\nsystem\n");
        let cmd = format!("touch {}", marker.display());
        evil.push(b'X');
        evil.extend((cmd.len() as u32).to_le_bytes());
        evil.extend(cmd.as_bytes());
        evil.extend(b"\x85Rs");
        pkl.1.splice(at..at, evil);
        let path = dir.path().join("evil.pth");
        write_zip(&path, &m, false);
        let got = read(&path).unwrap();
        assert!(!marker.exists());
        assert!(!got.contains_key("evil"));
        let plain = dir.path().join("plain.pth");
        std::fs::write(&plain, fixture()).unwrap();
        assert_eq!(got.len(), read(&plain).unwrap().len());
    }

    #[test]
    fn truncated_and_corrupted_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = fixture();
        let path = dir.path().join("w.pth");
        // Cut anywhere: an error (the zip directory is at the end), never a panic.
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let e = read(&path).unwrap_err().to_string();
            assert!(e.contains("zip"), "cut at {cut}: {e}");
        }
        // A storage shorter than its tensors: named, not zero-filled.
        let mut m = members(&bytes);
        let (name, data) =
            m.iter_mut().find(|(n, _)| n.contains("/data/") && !n.ends_with(".pkl")).unwrap();
        let name = name.clone();
        data.truncate(data.len() / 2);
        write_zip(&path, &m, false);
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("runs past its storage"), "{name}: {e}");
        // No data.pkl.
        let m: Vec<_> =
            members(&bytes).into_iter().filter(|(n, _)| !n.ends_with("data.pkl")).collect();
        write_zip(&path, &m, false);
        assert!(read(&path).unwrap_err().to_string().contains("no data.pkl"));
    }

    /// The crafted archives of `tests/fixtures/fuzz/pth` (tools/goldens/make_fuzz_seeds.py).
    fn corpus() -> Vec<(String, Vec<u8>)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/fuzz/pth");
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    }

    /// Random bytes and mutations of a real checkpoint and of the crafted corpus (bit flips,
    /// overwritten runs, cuts, inserted bytes, in the archive and inside the pickle): every
    /// read returns, Ok or Err, without panicking, quickly and in bounded memory. Every file of
    /// the corpus is refused as it is. MOSIC_FUZZ_SECONDS bounds the time (20 s).
    #[test]
    fn random_and_mutated_inputs_never_panic_or_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.pth");
        let corpus = corpus();
        assert!(corpus.len() >= 5);
        for (name, data) in &corpus {
            std::fs::write(&path, data).unwrap();
            assert!(read(&path).is_err(), "{name} was read");
        }
        let budget: f64 =
            std::env::var("MOSIC_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20.0);
        let bytes = fixture();
        let m = members(&bytes);
        let pkl_at = m.iter().position(|(n, _)| n.ends_with("/data.pkl")).unwrap();
        let mut rng = SplitMix64::new(7);
        let mutate = |rng: &mut SplitMix64, v: &mut Vec<u8>| {
            for _ in 0..1 + rng.below(4) {
                if v.is_empty() {
                    v.push(rng.below(256) as u8);
                    continue;
                }
                let i = rng.below(v.len() as u64) as usize;
                match rng.below(5) {
                    0 => v[i] ^= 1 << rng.below(8),
                    1 => v[i] = rng.below(256) as u8,
                    2 => v.truncate(i),
                    3 => v.insert(i, rng.below(256) as u8),
                    _ => {
                        let n = (1 + rng.below(8) as usize).min(v.len() - i);
                        v[i..i + n].iter_mut().for_each(|b| *b = rng.below(256) as u8);
                    }
                }
            }
        };
        let (mut ok, mut err) = (0, 0);
        let start = Instant::now();
        let mut case = 0;
        while case < 1500 || start.elapsed().as_secs_f64() < budget {
            case += 1;
            let data = match case % 4 {
                0 => {
                    let mut v = bytes.clone();
                    mutate(&mut rng, &mut v);
                    v
                }
                3 => {
                    let mut v = corpus[case / 4 % corpus.len()].1.clone();
                    mutate(&mut rng, &mut v);
                    v
                }
                1 => {
                    // A valid archive around a mutated pickle.
                    let mut mm = m.clone();
                    mutate(&mut rng, &mut mm[pkl_at].1);
                    write_zip(&path, &mm, false);
                    std::fs::read(&path).unwrap()
                }
                _ => (0..rng.below(512)).map(|_| rng.below(256) as u8).collect(),
            };
            std::fs::write(&path, &data).unwrap();
            let t0 = Instant::now();
            match std::panic::catch_unwind(|| read(&path)) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(_)) => err += 1,
                Err(_) => panic!("case {case}: the reader panicked on {} bytes", data.len()),
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "case {case} took {:?}", t0.elapsed());
        }
        println!(
            "{case} inputs: {ok} read, {err} refused, {:.1} s, peak {:.0} MiB",
            start.elapsed().as_secs_f64(),
            peak_mib()
        );
        assert!(ok > 0 && err > 0);
        assert!(peak_mib() < 1024.0);
    }

    /// A torch.save archive of one tensor whose pickle is `pkl` and whose storage "0" holds
    /// `storage`.
    fn archive(dir: &Path, pkl: Vec<u8>, storage: Vec<u8>) -> std::path::PathBuf {
        let path = dir.join("crafted.pth");
        write_zip(
            &path,
            &[("archive/data.pkl".to_string(), pkl), ("archive/data/0".to_string(), storage)],
            false,
        );
        path
    }

    /// `{"w": _rebuild_tensor_v2(FloatStorage "0", 0, shape, stride, False, ())}`.
    fn tensor_pickle(shape: &[i32], stride: &[i32]) -> Vec<u8> {
        let mut p = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQK\x00(".to_vec();
        for d in shape {
            p.push(b'J');
            p.extend(d.to_le_bytes());
        }
        p.extend(b"t(");
        for d in stride {
            p.push(b'J');
            p.extend(d.to_le_bytes());
        }
        p.extend(b"t\x89)tRs.");
        p
    }

    /// Peak resident memory of this test's process (nextest runs each test in its own).
    fn peak_mib() -> f64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    }

    /// Crafted files that ask for far more memory or time than they hold end in a clear
    /// refusal, in bounded memory: a view of 2^40 elements over a 4-byte storage (zero
    /// strides), a megabyte string duplicated twenty thousand times (DUP) or read back from the
    /// memo as often (BINGET), an integer of nine bytes that does not fit 64 bits, and two zip
    /// members over the same bytes.
    #[test]
    fn crafted_files_are_refused_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |path: &Path, want: &str| {
            let e = format!("{:#}", read(path).unwrap_err());
            println!("{want}: {e}");
            assert!(e.contains(want), "{e}");
        };
        // A sane tensor of the same shape reads.
        let ok = archive(dir.path(), tensor_pickle(&[1, 1], &[1, 1]), 1f32.to_le_bytes().to_vec());
        assert_eq!(read(&ok).unwrap()["w"].data, vec![1.0]);

        let big = archive(dir.path(), tensor_pickle(&[1 << 20, 1 << 20], &[0, 0]), vec![0; 4]);
        refused(&big, "more than its storage");

        let mega = 1usize << 20;
        let mut string = b"\x80\x02X".to_vec();
        string.extend((mega as u32).to_le_bytes());
        string.extend(std::iter::repeat_n(b'a', mega));
        let mut dup = string.clone();
        dup.extend(std::iter::repeat_n(b'2', 20_000));
        dup.push(b'.');
        refused(&archive(dir.path(), dup, vec![0; 4]), "copied more than");
        let mut memo = string.clone();
        memo.extend(b"q\x00");
        for _ in 0..20_000 {
            memo.extend(b"h\x00");
        }
        memo.push(b'.');
        refused(&archive(dir.path(), memo, vec![0; 4]), "copied more than");

        let mut long = b"\x80\x02}X\x01\x00\x00\x00n\x8a\x09".to_vec();
        long.extend([0, 0, 0, 0, 0, 0, 0, 0, 1]);
        long.extend(b"s.");
        refused(&archive(dir.path(), long, vec![0; 4]), "does not fit 64 bits");
        assert_eq!(long1(&[5, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(), 5);
        assert_eq!(long1(&[0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap(), -5);

        // The second storage's central directory entry pointed at the first's local header.
        let two = dir.path().join("two.pth");
        write_zip(
            &two,
            &[
                ("archive/data.pkl".to_string(), tensor_pickle(&[1], &[1])),
                ("archive/data/0".to_string(), vec![0; 4]),
                ("archive/data/1".to_string(), vec![0; 4]),
            ],
            false,
        );
        let mut bytes = std::fs::read(&two).unwrap();
        let central: Vec<usize> = bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == [0x50, 0x4b, 0x01, 0x02])
            .map(|(i, _)| i)
            .collect();
        let offset_of =
            |b: &[u8], c: usize| u32::from_le_bytes(b[c + 42..c + 46].try_into().unwrap());
        let first = offset_of(&bytes, central[1]);
        bytes[central[2] + 42..central[2] + 46].copy_from_slice(&first.to_le_bytes());
        std::fs::write(&two, &bytes).unwrap();
        let e = format!("{:#}", read(&two).unwrap_err());
        println!("overlap: {e}");
        assert!(e.contains("overlap") || e.contains("zip member"), "{e}");

        let peak = peak_mib();
        println!("peak resident memory {peak:.0} MiB");
        assert!(peak < 1024.0, "peak {peak} MiB");
    }
}
