//! MNIST's IDX format, plain or gzipped: a 4-byte magic number `00 00 08 n` (unsigned bytes,
//! `n` dimensions), `n` big-endian `u32` sizes, then the bytes in row-major order.
//!
//! Images are `[count, rows, cols]` (magic `0x00000803`), labels `[count]` (`0x00000801`). Pixels
//! are scaled to `[0, 1]`. Errors name the file and the byte offset (in the decompressed stream
//! for a gzipped file).

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::{Dataset, data_error};
use crate::error::Result;

/// Type code of unsigned bytes, the only element type MNIST uses.
const UNSIGNED_BYTE: u8 = 0x08;
/// The two leading bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Largest pixel value; pixels are divided by it.
const MAX_PIXEL: f32 = 255.0;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Loads MNIST-style images and labels into a [`Dataset`].
///
/// `n_classes`: the number of classes the labels must lie in (a trained model's); `None` infers
/// it as the largest label + 1.
pub fn load_idx(images: &Path, labels: &Path, n_classes: Option<usize>) -> Result<Dataset> {
    idx_dataset(
        (&read_bytes(images)?, &images.display().to_string()),
        (&read_bytes(labels)?, &labels.display().to_string()),
        n_classes,
    )
}

/// A [`Dataset`] from the bytes of an IDX images file and an IDX labels file, each given with
/// the name its errors carry; `n_classes` as in [`load_idx`].
pub fn idx_dataset(
    (image_bytes, image_source): (&[u8], &str),
    (label_bytes, label_source): (&[u8], &str),
    n_classes: Option<usize>,
) -> Result<Dataset> {
    let image_array = parse_idx(image_bytes, image_source, 3)?;
    let label_array = parse_idx(label_bytes, label_source, 1)?;
    let (n_images, n_labels) = (image_array.dims[0], label_array.dims[0]);
    if let Some(zero) = image_array.dims[1..].iter().position(|&dim| dim == 0) {
        // The sizes are u32s after the 4-byte magic and the count.
        return Err(data_error(
            image_source,
            format!(
                "offset {}: images of {} x {} pixels: expected at least one pixel",
                8 + 4 * zero,
                image_array.dims[1],
                image_array.dims[2]
            ),
        ));
    }
    if n_images != n_labels {
        return Err(data_error(
            label_source,
            format!(
                "{n_labels} labels, but {image_source} has {n_images} images: expected one label per image"
            ),
        ));
    }
    let n_classes = match n_classes {
        Some(n_classes) => n_classes,
        None => label_array
            .data
            .iter()
            .copied()
            .max()
            .map_or(0, |max| max as usize + 1),
    };
    // Labels start after the 4-byte magic number and the one 4-byte size.
    if let Some((index, label)) = label_array
        .data
        .iter()
        .enumerate()
        .find(|(_, label)| **label as usize >= n_classes)
    {
        return Err(data_error(
            label_source,
            format!(
                "offset {}: label {label} is out of range: the model has classes 0..{n_classes}",
                8 + index
            ),
        ));
    }
    if n_classes < 2 {
        return Err(data_error(
            label_source,
            "expected at least two classes".into(),
        ));
    }
    Ok(Dataset {
        features: image_array
            .data
            .iter()
            .map(|&p| p as f32 / MAX_PIXEL)
            .collect(),
        labels: label_array.data.iter().map(|&l| l as i64).collect(),
        n_features: image_array.dims[1..].iter().product(),
        n_classes,
    })
}

/// Parses an IDX array of unsigned bytes with `n_dims` dimensions from `bytes` (gzipped or not).
pub fn parse_idx(bytes: &[u8], source: &str, n_dims: usize) -> Result<IdxArray> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let plain = gunzip(bytes, source, n_dims)?;
        let source = format!("{source} (decompressed)");
        return parse_plain(&plain, &source, n_dims);
    }
    parse_plain(bytes, source, n_dims)
}

/// Decompresses a gzipped IDX file, reading no more than its header says the file holds plus
/// one byte (so that trailing bytes are still reported): a small file cannot expand into more
/// memory than the array it declares.
fn gunzip(bytes: &[u8], source: &str, n_dims: usize) -> Result<Vec<u8>> {
    let invalid =
        |err: std::io::Error| data_error(source, format!("not a valid gzip stream: {err}"));
    let mut decoder = GzDecoder::new(bytes);
    let header_len = 4 + 4 * n_dims;
    let mut plain = Vec::new();
    (&mut decoder)
        .take(header_len as u64)
        .read_to_end(&mut plain)
        .map_err(invalid)?;
    if plain.len() < header_len {
        // parse_plain names what is missing.
        return Ok(plain);
    }
    let expected_magic = [0, 0, UNSIGNED_BYTE, n_dims as u8];
    let declared = plain[4..]
        .chunks_exact(4)
        .map(|size| u64::from(u32::from_be_bytes(size.try_into().expect("4 bytes"))))
        .try_fold(1u64, u64::checked_mul);
    let Some(declared) = declared.filter(|_| plain[..4] == expected_magic) else {
        // A wrong magic number or sizes that overflow: parse_plain names them from the header.
        return Ok(plain);
    };
    decoder
        .take(declared.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(invalid)?;
    Ok(plain)
}

fn parse_plain(bytes: &[u8], source: &str, n_dims: usize) -> Result<IdxArray> {
    let expected_magic = u32::from_be_bytes([0, 0, UNSIGNED_BYTE, n_dims as u8]);
    let what = if n_dims == 1 { "labels" } else { "images" };
    let Some(magic) = bytes.get(..4) else {
        return Err(data_error(
            source,
            format!(
                "offset 0: {} bytes: expected an IDX file, which starts with the 4-byte \
                 magic number 0x{expected_magic:08x}",
                bytes.len()
            ),
        ));
    };
    let magic = u32::from_be_bytes(magic.try_into().expect("4 bytes"));
    if magic != expected_magic {
        return Err(data_error(
            source,
            format!(
                "offset 0: wrong magic number 0x{magic:08x}: expected 0x{expected_magic:08x} \
                 (IDX {what}: unsigned bytes, {n_dims} dimension{})",
                if n_dims == 1 { "" } else { "s" }
            ),
        ));
    }
    let header_len = 4 + 4 * n_dims;
    let Some(size_bytes) = bytes.get(4..header_len) else {
        return Err(data_error(
            source,
            format!(
                "offset 4: truncated header: expected {n_dims} dimension sizes ({} bytes), \
                 found {} bytes",
                4 * n_dims,
                bytes.len() - 4
            ),
        ));
    };
    let dims: Vec<usize> = size_bytes
        .chunks_exact(4)
        .map(|size| u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize)
        .collect();
    let body_len = dims
        .iter()
        .try_fold(1usize, |len, &dim| len.checked_mul(dim))
        .ok_or_else(|| data_error(source, format!("offset 4: dimensions {dims:?} overflow")))?;
    let body = &bytes[header_len..];
    let shape = dims
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" x ");
    if body.len() < body_len {
        return Err(data_error(
            source,
            format!(
                "offset {header_len}: truncated body: expected {body_len} bytes ({shape}), \
                 found {}",
                body.len()
            ),
        ));
    }
    if body.len() > body_len {
        return Err(data_error(
            source,
            format!(
                "offset {}: {} unexpected bytes after the {body_len} bytes of a {shape} array",
                header_len + body_len,
                body.len() - body_len
            ),
        ));
    }
    if dims[0] == 0 {
        return Err(data_error(
            source,
            format!("offset 4: no {what}: the count is 0"),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|err| data_error(&path.display().to_string(), format!("cannot read: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_small_label_array() {
        let array = parse_idx(&[0, 0, 8, 1, 0, 0, 0, 2, 7, 3], "l", 1).unwrap();
        assert_eq!(array.dims, [2]);
        assert_eq!(array.data, [7, 3]);
    }
}
