//! `.npy` files (NumPy's format, version 1) of the benchmark vectors, for FAISS to read.

use anyhow::{bail, Context, Result};

/// Writes a C-order .npy (format 1.0) of `shape` with elements of type `descr` (`<f4`, `<i8`)
/// whose little-endian bytes `body` writes.
pub fn write_npy(
    path: &std::path::Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64.
    let pad = (64 - (10 + header.len() + 1) % 64) % 64;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    body(&mut f)?;
    f.flush()?;
    Ok(())
}

/// A float32 .npy, written a value at a time (no copy of the array beside it).
pub fn write_f32_npy(path: &std::path::Path, shape: &[usize], v: &[f32]) -> Result<()> {
    write_npy(path, "<f4", shape, |w| v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())))
}

/// Reads a 2-D little-endian float32 C-order .npy: (rows, cols, values). The values are read
/// a slice at a time, so the file's bytes are never held beside them.
pub fn read_f32_npy(path: &std::path::Path) -> Result<(usize, usize, Vec<f32>)> {
    use std::io::Read;
    let bad = || anyhow::anyhow!("{}: not a 2-D float32 .npy", path.display());
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut pre = [0u8; 8];
    f.read_exact(&mut pre).map_err(|_| bad())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad());
    }
    let len = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            f.read_exact(&mut l)?;
            u16::from_le_bytes(l) as usize
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            f.read_exact(&mut l)?;
            u32::from_le_bytes(l) as usize
        }
        _ => return Err(bad()),
    };
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).map_err(|_| bad())?;
    let header = String::from_utf8(header)?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        bail!("{}: want little-endian float32 in C order, header {header}", path.display());
    }
    let shape = &header[header.find("'shape': (").ok_or_else(bad)? + 10..];
    let dims: Vec<usize> = shape[..shape.find(')').ok_or_else(bad)?]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else { return Err(bad()) };
    let mut v = Vec::with_capacity(rows * cols);
    let mut buf = vec![0u8; 1 << 20];
    while v.len() < rows * cols {
        let want = ((rows * cols - v.len()) * 4).min(buf.len());
        f.read_exact(&mut buf[..want]).map_err(|_| bad())?;
        v.extend(buf[..want].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
    }
    if f.read(&mut [0u8; 1])? != 0 {
        return Err(bad());
    }
    Ok((rows, cols, v))
}
