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

/// The longest .npy header read (NumPy writes under 200 bytes; version 2 allows 4 GiB).
const HEADER_MAX: usize = 1 << 16;

/// Reads a 2-D little-endian float32 C-order .npy: (rows, cols, values). The values are read
/// a slice at a time, so the file's bytes are never held beside them.
pub fn read_f32_npy(path: &std::path::Path) -> Result<(usize, usize, Vec<f32>)> {
    use std::io::Read;
    let bad = || anyhow::anyhow!("{}: not a 2-D float32 .npy", path.display());
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let file_len = f.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
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
    // The header is a short Python dict: its stated length never drives a large allocation.
    if len > HEADER_MAX || len as u64 > file_len {
        bail!("{}: a .npy header of {len} bytes (at most {HEADER_MAX} read)", path.display());
    }
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
    // The values the header promises must be in the file before any is allocated.
    let values = rows.checked_mul(cols).filter(|n| n.checked_mul(4).is_some()).ok_or_else(bad)?;
    let data_start = 8 + if pre[6] == 1 { 2 } else { 4 } + len as u64;
    if file_len.checked_sub(data_start) != Some(values as u64 * 4) {
        bail!(
            "{}: the header promises {rows} x {cols} float32 values ({} bytes), the file holds {} after its header",
            path.display(),
            values as u64 * 4,
            file_len.saturating_sub(data_start)
        );
    }
    let mut v = Vec::with_capacity(values);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers that ask for far more than the file holds are refused before anything is
    /// allocated: a 4 GiB version-2 header, a shape whose product overflows or exceeds the
    /// data; a real file reads back.
    #[test]
    fn npy_headers_never_drive_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.npy");
        write_f32_npy(&good, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(read_f32_npy(&good).unwrap(), (2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let raw = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            format!("{:#}", read_f32_npy(&p).unwrap_err())
        };
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend(u32::MAX.to_le_bytes());
        assert!(raw("v2.npy", v2).contains("header of 4294967295 bytes"));
        let header = |shape: &str| {
            let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}\n");
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((h.len() as u16).to_le_bytes());
            b.extend(h.as_bytes());
            b.extend([0u8; 16]);
            b
        };
        assert!(raw("big.npy", header("1000000000, 1000000000"))
            .contains("promises 1000000000 x 1000000000"));
        assert!(
            raw("overflow.npy", header("18446744073709551615, 2")).contains("not a 2-D float32")
        );
        assert!(raw("short.npy", header("4, 2"))
            .contains("promises 4 x 2 float32 values (32 bytes), the file holds 16"));
    }
}
