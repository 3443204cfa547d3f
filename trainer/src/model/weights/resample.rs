//! Antialiased bicubic resize as PyTorch's CPU kernel computes it, in its float32 arithmetic:
//! what timm resamples position embeddings with.

/// Keys' cubic with a = -0.5, PyTorch's (and Pillow's) antialias filter.
fn cubic_aa(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// For each output index: first input index and normalised weights. The support widens with the
/// downscale factor, which is what makes it antialiased.
fn aa_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let support: f32 = if scale >= 1.0 { (4.0 * 0.5) * scale } else { 4.0 * 0.5 };
    let invscale: f32 = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = (scale as f64 * (i as f64 + 0.5)) as f32;
            let xmin = ((center as f64 - support as f64 + 0.5) as i64).max(0);
            let xmax = ((center as f64 + support as f64 + 0.5) as i64).min(in_size as i64);
            let mut w: Vec<f32> = (xmin..xmax)
                .map(|j| cubic_aa((((j as f32 - center) as f64 + 0.5) * invscale as f64) as f32))
                .collect();
            let total: f32 = w.iter().fold(0.0, |a, b| a + b);
            if total != 0.0 {
                w.iter_mut().for_each(|x| *x /= total);
            }
            (xmin as usize, w)
        })
        .collect()
}

/// Bicubic antialiased resize of a `[C, H, W]` grid, exactly like
/// `torch.nn.functional.interpolate(x[None], (out_h, out_w), mode="bicubic", antialias=True,
/// align_corners=False)[0]`: separable, width first, then height.
pub fn bicubic_aa(
    src: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), channels * in_h * in_w, "bicubic_aa: src is not [C, H, W]");
    let apply = |row: &[f32], stride: usize, (start, w): &(usize, Vec<f32>)| -> f32 {
        let mut acc = row[start * stride] * w[0];
        for (j, wj) in w.iter().enumerate().skip(1) {
            acc += row[(start + j) * stride] * wj;
        }
        acc
    };
    let mut tmp = src.to_vec();
    let mut w_now = in_w;
    if out_w != in_w {
        let ws = aa_weights(in_w, out_w);
        tmp = vec![0.0; channels * in_h * out_w];
        for r in 0..channels * in_h {
            let row = &src[r * in_w..(r + 1) * in_w];
            for (o, wt) in ws.iter().enumerate() {
                tmp[r * out_w + o] = apply(row, 1, wt);
            }
        }
        w_now = out_w;
    }
    if out_h == in_h {
        return tmp;
    }
    let hs = aa_weights(in_h, out_h);
    let mut out = vec![0.0; channels * out_h * w_now];
    for c in 0..channels {
        let plane = &tmp[c * in_h * w_now..(c + 1) * in_h * w_now];
        for (o, wt) in hs.iter().enumerate() {
            for x in 0..w_now {
                out[(c * out_h + o) * w_now + x] = apply(&plane[x..], w_now, wt);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fixtures, max_abs_diff, st};

    #[test]
    fn resample_matches_torch() {
        let rs = st(&fixtures().join("resample.safetensors"));
        for i in 0.. {
            let Some(src) = rs.get(&format!("case{i}.src")) else {
                break;
            };
            let want = &rs[&format!("case{i}.out")];
            let (c, h, w) = (src.shape[0], src.shape[1], src.shape[2]);
            let got = bicubic_aa(&src.data, c, h, w, want.shape[1], want.shape[2]);
            let diff = max_abs_diff(&got, &want.data);
            println!(
                "resample case{i} [{c},{h},{w}] -> {:?}: max abs diff {diff:.3e}",
                &want.shape[1..]
            );
            assert!(diff < 2e-6, "case{i}: {diff}");
        }
    }
}
